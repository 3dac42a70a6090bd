"""The outbox worker: claims due messages with a lease, sends them, retries with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping

from hub.backoff import backoff_delay
from hub.channels.base import Channel, SendRequest
from hub.errors import AwaitingUser, SendError
from hub.events import Audio, File, Image, Message, Video
from hub.metrics import Metrics
from hub.redact import safe_text
from hub.storage.chats import ChatRepo
from hub.storage.media import MediaStore
from hub.storage.outbox import NewMessage, OutboxItem, OutboxRepo

log = logging.getLogger("hub.delivery")

# How long a "sent" mark waits at most between tries while the database refuses it.
MARK_SENT_BACKOFF_CAP_S = 5.0


class Outbox:
    """Queue messages for delivery and run the worker that sends them."""

    def __init__(
        self,
        repo: OutboxRepo,
        media: MediaStore,
        channels: Mapping[str, Channel],
        chats: ChatRepo,
        metrics: Metrics,
        *,
        max_attempts: int = 10,
        concurrency: int = 64,
        poll_s: float = 0.5,
    ) -> None:
        self.repo = repo
        self._media = media
        self._channels = channels
        self._chats = chats
        self._metrics = metrics
        self.max_attempts = max_attempts
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._inflight: set[int] = set()
        self._busy: set[str] = set()  # targets with a send under way in this process
        self._sends: set[asyncio.Task[None]] = set()
        # Awaited before each claim: the inbound side's pacing, so that sends too let the
        # webhooks' acks go first while the loop is behind.
        self.give_way: Callable[[], Awaitable[None]] | None = None

    # --- queueing -------------------------------------------------------------------------

    async def put(self, msg: NewMessage) -> int:
        """Queue a message durably; returns its outbox id (the existing one for a known key)."""
        msg = await self._persist_media(msg)
        item_id = await self.repo.enqueue(msg)
        self._wake.set()
        return item_id

    async def release_waiting(self, target: str) -> list[int]:
        """The chat wrote again: send what waited for that (status `waiting`) now."""
        ids = await self.repo.release_waiting(target)
        if ids:
            self._wake.set()
        return ids

    def wake(self) -> None:
        """Claim now: something was queued behind the worker's back (with a job's change)."""
        self._wake.set()

    async def record_sent(self, msg: NewMessage) -> int:
        """Record a message that went out directly (a live stream), so nothing resends it."""
        return await self.repo.enqueue(await self._persist_media(msg), already_sent=True)

    async def _persist_media(self, msg: NewMessage) -> NewMessage:
        # Bytes do not belong in a JSON row: store them as media files and keep the path.
        if not any(isinstance(s, Image | Video | Audio | File) and s.data is not None for s in msg.message.segments):
            return msg
        segments = []
        for seg in msg.message.segments:
            if isinstance(seg, Image | Video | Audio | File) and seg.data is not None:
                stored = await self._media.save_bytes(seg.data, name=seg.name, mime=seg.mime, kind=seg.kind)
                seg = dataclasses.replace(seg, data=None, path=str(stored.path), size=stored.size)
            segments.append(seg)
        return dataclasses.replace(msg, message=Message(tuple(segments)))

    async def retry_now(self, target_prefixes: list[str]) -> None:
        """Send now what waits for these targets (a channel's connection came back)."""
        if await self.repo.make_due(target_prefixes):
            self._wake.set()

    # --- the worker -----------------------------------------------------------------------

    async def start(self, *, release_all: bool = False) -> None:
        self._stopping = False
        if release_all:
            await self.repo.release_all()
        self._task = asyncio.create_task(self._run(), name="outbox-worker")
        self._renew_task = asyncio.create_task(self._renew_leases(), name="outbox-renew")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop claiming; give sends under way `grace_s` to finish (the rest resume later)."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        if self._sends:
            _, pending = await asyncio.wait(self._sends, timeout=grace_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._renew_task:
            self._renew_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew_task

    async def _run(self) -> None:
        while not self._stopping:
            if self.give_way is not None:
                await self.give_way()
            free = self._concurrency - len(self._inflight)
            items: list[OutboxItem] = []
            if free > 0:
                try:
                    items = await self.repo.claim_due(free)
                except Exception:
                    log.exception("event=outbox_claim_failed")
                    await asyncio.sleep(1)
                    continue
            for target, group in _by_target(items).items():
                if target in self._busy or any(i.id in self._inflight for i in group):
                    # A row this process is still sending (its lease ran out while the database
                    # was away) keeps its lease until it expires rather than go out twice; the
                    # chat's other rows go back at once, to be claimed when its sender is done.
                    log.warning("event=outbox_claim_skipped target=%s ids=%s", target, [i.id for i in group])
                    try:
                        await self.repo.release([i.id for i in group if i.id not in self._inflight])
                    except Exception:
                        log.exception("event=outbox_release_failed target=%s", target)
                    continue
                self._inflight.update(i.id for i in group)
                self._busy.add(target)
                task = asyncio.create_task(self._send_group(target, group), name=f"send:{target}")
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            if len(items) >= free > 0:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_s)
            self._wake.clear()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.repo.lease_s / 3)
            try:
                await self.repo.renew(list(self._inflight))
            except Exception:
                log.exception("event=outbox_renew_failed")

    async def _send_group(self, target: str, group: list[OutboxItem]) -> None:
        """Send one chat's items in order; a failure defers the rest behind it."""
        try:
            async with self._slots:
                for n, item in enumerate(group):
                    ok = await self._send_one(item)
                    if not ok:
                        for later in group[n + 1 :]:
                            await self.repo.mark_retry(
                                later.id,
                                attempts=later.attempts,
                                delay_s=1.0,
                                error="waiting for an earlier message",
                            )
                        break
        except Exception:
            # The database failed a retry or failure mark: the leases left run out and the
            # rows are claimed again; the worker itself goes on.
            log.exception("event=outbox_group_failed target=%s ids=%s", target, [i.id for i in group])
        finally:
            for item in group:
                self._inflight.discard(item.id)
            self._busy.discard(target)
            self._wake.set()

    async def _send_one(self, item: OutboxItem) -> bool:
        channel = self._channels.get(item.target.channel)
        attempts = item.attempts + 1
        started = time.perf_counter()
        try:
            if channel is None:
                raise SendError(f"channel {item.target.channel} is not enabled", retryable=True, retry_after=60)

            async def on_progress(n: int) -> None:
                try:
                    await self.repo.set_progress(item.id, n)
                except Exception as exc:  # the parts went out: a lost count only risks resending them
                    log.warning("event=outbox_progress_failed outbox_id=%d error=%r", item.id, exc)

            # The one window DESIGN.md allows: dying inside this await may send twice.
            result = await channel.send(
                SendRequest(
                    item.target,
                    item.message,
                    item.quote,
                    item.context,
                    item.progress,
                    on_progress,
                    progress_after_last=False,  # marked sent at once instead
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await self._failed(item, attempts, exc)
        await self._record_sent(item, list(result.message_ids))
        self._metrics.replies_out.labels(item.target.channel).inc()
        # The event's own line is the router's (event=handled), and the outbox row keeps when
        # it went: a send is worth a line of its own when it took retries.
        log.log(
            logging.INFO if attempts > 1 else logging.DEBUG,
            "event=sent outbox_id=%d target=%s attempts=%d ms=%.1f",
            item.id,
            item.target,
            attempts,
            (time.perf_counter() - started) * 1000,
        )
        return True

    async def _record_sent(self, item: OutboxItem, sent_ids: list[str]) -> None:
        """Mark the message sent, trying until it commits: a lost "sent" would send it again."""
        tries = 0
        while True:
            try:
                await self.repo.mark_sent(item.id, sent_ids)
                return
            except Exception as exc:
                tries += 1
                delay = backoff_delay(tries, base=0.1, cap=MARK_SENT_BACKOFF_CAP_S)
                log.warning(
                    "event=mark_sent_retry outbox_id=%d tries=%d delay_s=%.2f error=%r", item.id, tries, delay, exc
                )
                await asyncio.sleep(delay)

    async def _failed(self, item: OutboxItem, attempts: int, exc: Exception) -> bool:
        if isinstance(exc, AwaitingUser):
            # Not a failure: the platform takes it as the answer to the chat's next message.
            await self.repo.mark_waiting(item.id, error=str(exc))
            log.info("event=send_waiting outbox_id=%d target=%s reason=%r", item.id, item.target, str(exc))
            return True  # parked out of line: the chat's later messages need not wait behind it
        if isinstance(exc, SendError):
            retryable, retry_after, final_chat = exc.retryable, exc.retry_after, exc.final_for_chat
        else:
            # Network errors, timeouts, a platform's garbled answer: worth another try.
            retryable, retry_after, final_chat = True, None, False
        reason = safe_text(f"{type(exc).__name__}: {exc}")  # stored in the outbox: no tokens, no queries
        final = not retryable or attempts >= self.max_attempts
        self._metrics.send_failures.labels(item.target.channel, "yes" if final else "no").inc()
        if final:
            if not await self.repo.mark_failed(item.id, attempts=attempts, error=reason):
                log.warning("event=outbox_lease_lost outbox_id=%d", item.id)
                return False
            if final_chat:
                await self._chats.mark_unreachable(str(item.target), reason)
            log.warning(
                "event=send_failed outbox_id=%d target=%s attempts=%d final=yes error=%r",
                item.id,
                item.target,
                attempts,
                reason,
            )
            return False
        delay = retry_after if retry_after is not None else backoff_delay(attempts)
        if not await self.repo.mark_retry(
            item.id, attempts=attempts, delay_s=delay, error=reason
        ):
            log.warning("event=outbox_lease_lost outbox_id=%d", item.id)
            return False
        log.info(
            "event=send_retry outbox_id=%d target=%s attempts=%d delay_s=%.1f error=%r",
            item.id,
            item.target,
            attempts,
            delay,
            reason,
        )
        return False


def _by_target(items: list[OutboxItem]) -> dict[str, list[OutboxItem]]:
    groups: dict[str, list[OutboxItem]] = defaultdict(list)
    for item in items:
        groups[str(item.target)].append(item)
    return groups
