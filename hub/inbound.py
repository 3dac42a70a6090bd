"""From the inbox to the router: ordered per-chat lanes, crash recovery, and how replies leave.

`Dispatcher.submit` is the Ingress every channel calls: store (deduplicated), then hand the
event to a per-chat lane and return, so the channel can ack at once. Events stored but never
handled (a crash, a kill) are claimed again at start and whenever their lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hub.backoff import backoff_delay
from hub.channels.base import LiveSink
from hub.delivery import Outbox
from hub.errors import HubError
from hub.events import Event, Message
from hub.i18n import N_, texts
from hub.i18n.language import HINT_KEY, ChatLanguages, platform_languages
from hub.metrics import Metrics
from hub.redact import safe_text
from hub.routing.context import Replier
from hub.storage.db import is_transient, utcnow
from hub.storage.inbox import InboxRepo, InboxRow
from hub.storage.outbox import NewMessage

log = logging.getLogger("hub.inbound")

# Tries of one event before it counts as poison: marked failed and its sender told.
MAX_ATTEMPTS = 5
UNHANDLED_TEXT = N_("Sorry, I could not handle that message, even after several tries. Please try again later.")
RETRY_CAP_S = 2.0
# The loop's lateness is probed every LAG_PROBE_S; above LAG_HIGH_S a new event waits (at most
# PACE_MAX_S) so that the acks of the webhooks do not queue behind handling.
LAG_PROBE_S = 0.005
LAG_HIGH_S = 0.010
PACE_MAX_S = 0.1


class IngressClosed(HubError):
    """The hub is shutting down and takes no new events: answer 503 so the platform retries."""


@dataclass(slots=True)
class _Work:
    row_id: int
    event: Event
    live: LiveSink | None = None
    done: asyncio.Future[None] | None = None
    # Taken back by recovery: its handling counts as an attempt (fresh events cost no write).
    recovered: bool = False


@dataclass(slots=True)
class _Lane:
    queue: deque[_Work] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Dispatcher:
    def __init__(
        self,
        inbox: InboxRepo,
        handle: Callable[[Event, Replier], Awaitable[None]],
        make_replier: Callable[[Event, LiveSink | None], Replier],
        metrics: Metrics,
        *,
        recover_all_at_start: bool,
        recovery_interval_s: float = 10.0,
        max_active: int = 128,
        tell_unhandled: Callable[[Event], Awaitable[None]] | None = None,
        retry_budget_s: float = 30.0,
    ) -> None:
        self._inbox = inbox
        self._handle = handle
        self._make_replier = make_replier
        self._metrics = metrics
        self._recover_all = recover_all_at_start
        self._recovery_interval = recovery_interval_s
        self._tell_unhandled = tell_unhandled
        # How long a lane keeps trying one event while the database refuses it; the chat's
        # later events wait behind it, so their order holds through a short outage.
        self._retry_budget = retry_budget_s
        # How late the loop runs (seconds), probed: handling gives way to acks when it is late.
        self._lag = 0.0
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._lanes: dict[str, _Lane] = {}
        self._inflight: set[int] = set()
        self._accepting = False
        self._tasks: list[asyncio.Task[None]] = []
        # Events handled at once, over all chats. A flood would otherwise start thousands of
        # handlers whose every step queues ahead of the webhooks' acks; the rest wait, stored.
        self._active = asyncio.Semaphore(max_active)

    async def submit(self, event: Event, live: LiveSink | None = None) -> bool:
        """Store the event and queue it for handling; False for a duplicate."""
        work = await self._store(event, live, wait=False)
        return work is not None

    async def submit_and_wait(self, event: Event, live: LiveSink) -> bool:
        """Like submit, then wait until the event is handled (its live replies are out)."""
        work = await self._store(event, live, wait=True)
        if work is None:
            return False
        assert work.done is not None
        await asyncio.shield(work.done)
        return True

    async def _store(self, event: Event, live: LiveSink | None, *, wait: bool) -> _Work | None:
        if not self._accepting:
            raise IngressClosed("the hub is shutting down")
        row_id = await self._inbox.store(event)
        if row_id is None:
            self._metrics.duplicates.labels(event.channel).inc()
            log.info("event=duplicate id=%s channel=%s", event.id, event.channel)
            return None
        self._metrics.events_in.labels(event.channel).inc()
        work = _Work(row_id, event, live, asyncio.get_running_loop().create_future() if wait else None)
        self._enqueue(work)
        return work

    def _enqueue(self, work: _Work) -> None:
        self._inflight.add(work.row_id)
        key = str(work.event.chat)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.queue.append(work)
        if lane.task is None:
            lane.task = asyncio.create_task(self._run_lane(key, lane), name=f"lane:{key}")

    async def _run_lane(self, key: str, lane: _Lane) -> None:
        try:
            while lane.queue:
                work = lane.queue[0]
                await self.give_way()
                try:
                    async with self._active:
                        handled = await self._handle_one(work)
                    if handled is not None:
                        # Outside the slot: another chat's event is handled while this commits.
                        await self._mark_done(work, *handled)
                except Exception:
                    # Marking it done failed (the database is busy or full): the lane goes on,
                    # and the row, no longer renewed, is taken again by recovery.
                    log.exception("event=lane_item_failed id=%s row=%d", work.event.id, work.row_id)
                finally:
                    self._inflight.discard(work.row_id)
                    lane.queue.popleft()
                    if work.done is not None and not work.done.done():
                        work.done.set_result(None)
        finally:
            lane.task = None
            if not lane.queue and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def give_way(self) -> None:
        """The loop is behind: the webhooks' acks (store, then answer) go first. A new event
        waits until the loop catches up, or at most PACE_MAX_S, so handling never stops."""
        if self._lag > LAG_HIGH_S:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), PACE_MAX_S)

    async def _lag_probe(self) -> None:
        """How late the loop runs what is due: a spike counts at once, then fades."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self._lag = max(loop.time() - began - LAG_PROBE_S, self._lag * 0.7)
            if self._lag > LAG_HIGH_S:
                self._caught_up.clear()
            else:
                self._caught_up.set()

    async def _handle_one(self, work: _Work) -> tuple[str | None, float] | None:
        """Handle one event, again while the database refuses writes (within the retry budget):
        (the error of a bug, the budget's deadline) for the mark that follows. None past the
        budget: it stays pending and recovery takes it later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_budget
        tries = 0
        if work.recovered:
            try:
                await self._inbox.note_attempt(work.row_id)
            except Exception as exc:
                log.warning("event=note_attempt_failed id=%s error=%r", work.event.id, exc)
        while True:
            finished, error = await self._attempt(work)
            if finished:
                break
            tries += 1
            if loop.time() >= deadline:
                log.warning("event=handle_deferred id=%s tries=%d", work.event.id, tries)
                return None
            await asyncio.sleep(backoff_delay(tries, base=0.1, cap=RETRY_CAP_S))
        self._metrics.handling.labels(work.event.channel).observe(
            max(0.0, (utcnow() - work.event.received_at).total_seconds())
        )
        return error, deadline

    async def _attempt(self, work: _Work) -> tuple[bool, str | None]:
        """One handling: (finished, the error of a bug); not finished when storage refused."""
        replier = self._make_replier(work.event, work.live)
        try:
            await self._handle(work.event, replier)
        except asyncio.CancelledError:
            # Shutting down: leave the row pending, it is handled after restart.
            raise
        except Exception as exc:
            if is_transient(exc):
                log.warning("event=handle_storage_failed id=%s error=%r", work.event.id, exc)
                return False, None
            # The router already catches skill errors; this is a bug guard.
            log.exception("event=handle_failed id=%s", work.event.id)
            return True, safe_text(repr(exc))  # stored in the inbox: no tokens, no queries
        if getattr(replier, "lost_reply", False):
            # A reply could not be stored (the router apologised, or the skill caught it):
            # handled again, its keyed replies queue nothing twice.
            return False, None
        return True, None

    async def _mark_done(self, work: _Work, error: str | None, deadline: float) -> None:
        """Mark handled, trying again while within the budget: handling it twice costs more."""
        tries = 0
        while True:
            try:
                await self._inbox.mark_done(work.row_id, error)
                return
            except Exception as exc:
                tries += 1
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                log.warning("event=mark_done_retry id=%s tries=%d error=%r", work.event.id, tries, exc)
                await asyncio.sleep(backoff_delay(tries, base=0.1, cap=RETRY_CAP_S))

    # --- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Take events from now on (stored and handled at once), before the channels start: a
        long connection that delivers the moment it connects must find the ingress open."""
        self._accepting = True

    async def start(self) -> None:
        self._accepting = True
        # Pick up what a previous life of this process stored but never handled.
        await self._recover(take_all=self._recover_all)
        self._tasks = [
            asyncio.create_task(self._recovery_loop(), name="inbox-recovery"),
            asyncio.create_task(self._renew_loop(), name="inbox-renew"),
            asyncio.create_task(self._lag_probe(), name="inbox-lag-probe"),
        ]

    async def _recover(self, *, take_all: bool = False) -> int:
        total = 0
        while True:
            rows = await self._inbox.claim_stalled(200, take_all=take_all)
            rows = [r for r in rows if r.id not in self._inflight]
            for row in rows:
                if row.attempts >= MAX_ATTEMPTS:
                    try:
                        await self._give_up(row)
                    except Exception:
                        # Its lease runs out and the next pass tries again; the others go on.
                        log.exception("event=inbox_give_up_failed id=%s", row.event.id)
                    continue
                log.info("event=recovered id=%s channel=%s attempts=%d", row.event.id, row.event.channel, row.attempts)
                self._enqueue(_Work(row.id, row.event, recovered=True))
            total += len(rows)
            if len(rows) < 200:
                return total

    async def _give_up(self, row: InboxRow) -> None:
        """A poison event: tried MAX_ATTEMPTS times without finishing. Tell its sender, once."""
        log.error(
            "event=inbox_gave_up id=%s channel=%s chat=%s attempts=%d",
            row.event.id,
            row.event.channel,
            row.event.chat,
            row.attempts,
        )
        # The notice first: it is keyed, so a crash before the mark below queues it only once.
        if self._tell_unhandled is not None:
            await self._tell_unhandled(row.event)
        await self._inbox.mark_done(row.id, f"gave up after {row.attempts} attempts")

    async def _recovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self._recovery_interval)
            try:
                await self._recover()
            except Exception:
                log.exception("event=inbox_recovery_failed")

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._inbox.lease_s / 3)
            try:
                await self._inbox.renew(list(self._inflight))
            except Exception:
                log.exception("event=inbox_renew_failed")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Take no more events; let lanes finish for `grace_s`; the rest stays pending."""
        self._accepting = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def busy(self) -> int:
        return len(self._inflight)


async def tell_unhandled(outbox: Outbox, event: Event, languages: ChatLanguages | None = None) -> None:
    """Tell the sender their event was given up; its key makes a second telling a no-op."""
    lang = await (languages or platform_languages()).of_chat(str(event.chat), event.context.get(HINT_KEY))
    await outbox.put(
        NewMessage(
            target=event.chat,
            message=Message.of(texts(lang)(UNHANDLED_TEXT)),
            quote=event.id,
            context=event.context,
            idempotency_key=f"{event.channel}:{event.id}:unhandled",
        )
    )
