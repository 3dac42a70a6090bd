"""WeChat's passive reply mode: the answer to a message rides in the HTTP answer to it.

How a reply gets there. The skill replies as always, through the outbox. The outbox calls the
channel's `send`, which in passive mode prepares the parts (uploads media) and `hold`s them in
the held_replies table instead of calling the push API; the outbox then marks the message
sent: from there the table carries it, durably. The request of the user's message is waiting
in `answer` (up to ~4.5 s, WeChat gives up at 5 s): woken by `hold` in this process, or by its
own polling when another process held it, it takes the reply and answers with it. A reply
that comes too late stays held and goes out as the answer to the user's next message, marked
as the reply to an earlier one. Each answer carries one text (several held texts merged up to
2,048 bytes) or one media; what does not fit waits for the next message, and the text says so.

WeChat's retries: a request that gets no answer within 5 s is retried twice with the same
MsgId. The inbox recognises the retry (no second handling); the retry then waits for the same
reply, and the request it replaces stops waiting. A retry of a message already answered gets
the same answer again (kept for a minute), since WeChat may not have received the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hub.i18n import LANGS, N_, Texts, texts
from hub.i18n.language import ChatLanguages, platform_languages
from hub.storage.db import utcnow
from hub.storage.held import HeldReply, HeldReplyRepo, dedupe_key

log = logging.getLogger("hub.wechat")

PASSIVE_TEXT_MAX = 2048  # bytes of one passive text reply
EARLIER = N_("[Reply to your earlier message]")
CURRENT = N_("[Reply to this message]")
MORE = N_("[More follows: send me any message to get it.]")
SEPARATOR = "\n\n"
# Room for the notes around held text, so any one held text fits a reply with its notes.
NOTES_ROOM = max(sum(len(texts(lang)(n).encode()) for n in (EARLIER, CURRENT, MORE)) for lang in LANGS) + 4 * len(
    SEPARATOR
)
HELD_TEXT_MAX = PASSIVE_TEXT_MAX - NOTES_ROOM
ANSWER_MEMORY_S = 60.0
HOLD_DAYS = 7
# Temporary media lives 3 days at WeChat; a held upload older than this is sent as its link.
MEDIA_LIFETIME = timedelta(days=2, hours=20)


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Plan:
    payload: dict[str, Any]
    ids: list[int]


def plan_answer(held: Sequence[HeldReply], event_id: str, t: Texts, now: datetime | None = None) -> Plan:
    """The one reply to give now from what is held (oldest first), and the rows it uses.

    A held media goes alone (as its link once WeChat has forgotten the upload). Held texts are
    merged while they fit, each group marked when it answers another message than this one (in
    the chat's language, `t`); a note says when more is waiting.
    """
    now = now or utcnow()
    first = held[0]
    if first.payload.get("msgtype") != "text":
        payload = dict(first.payload)
        if now - first.created_at > MEDIA_LIFETIME:
            payload = {"msgtype": "text", "text": str(payload.get("expired") or "")}
        payload.pop("expired", None)
        return Plan(payload, [first.id])
    blocks: list[str] = []
    ids: list[int] = []
    last_quote: object = object()
    for reply in held:
        if reply.payload.get("msgtype") != "text":
            break
        earlier = reply.quote is not None and reply.quote != event_id
        block = str(reply.payload.get("text", ""))
        if reply.quote != last_quote and (earlier or blocks):
            block = f"{t(EARLIER) if earlier else t(CURRENT)}\n{block}"
        more_room = _size(SEPARATOR + t(MORE)) if len(ids) + 1 < len(held) else 0
        if blocks and _size(SEPARATOR.join([*blocks, block])) + more_room > PASSIVE_TEXT_MAX:
            break
        blocks.append(block)
        ids.append(reply.id)
        last_quote = reply.quote
    text = SEPARATOR.join(blocks)
    if len(ids) < len(held):
        text += SEPARATOR + t(MORE)
    return Plan({"msgtype": "text", "text": text}, ids)


class PassiveReplies:
    def __init__(
        self,
        held: HeldReplyRepo,
        *,
        wait_s: float = 4.5,
        poll_s: float = 0.3,
        languages: ChatLanguages | None = None,
    ) -> None:
        self._held = held
        self._languages = languages or platform_languages()
        self.wait_s = wait_s
        self._poll_s = poll_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._current: dict[str, object] = {}
        self._given: dict[str, tuple[float, dict[str, Any]]] = {}
        self._closing = False

    async def hold(
        self, chat: str, quote: str | None, parts: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
    ) -> None:
        """Keep a prepared reply for the chat's next request; wake a request waiting for it.

        `parts` are `(what, payload)` pairs: `what` names the part independently of its upload
        (the text, or the media segment), so the same reply handed over twice is held once.
        """
        keyed = [(dedupe_key(chat, quote, i, what), payload) for i, (what, payload) in enumerate(parts)]
        await self._held.hold_many(chat, quote, keyed)
        log.info("event=reply_held chat=%s quote=%s parts=%d", chat, quote, len(parts))
        for waiter in self._waiters.get(chat, ()):
            waiter.set()

    async def answer(
        self,
        chat: str,
        event_id: str,
        *,
        expects_reply: bool,
        is_open: Callable[[], bool],
        arrived: float | None = None,
    ) -> dict[str, Any] | None:
        """Wait for the reply to `event_id` until `wait_s` after the request `arrived` (monotonic).

        Returns the payload to answer with, or None for "no reply now".
        """
        now = time.monotonic()
        self._given = {k: v for k, v in self._given.items() if v[0] > now}
        if event_id in self._given:
            return self._given[event_id][1]
        me = object()
        self._current[event_id] = me  # a retry of this message replaces an earlier waiter
        waiter = asyncio.Event()
        self._waiters.setdefault(chat, set()).add(waiter)
        deadline = (arrived if arrived is not None else now) + self.wait_s
        t: Texts | None = None  # the chat's language, once there is a reply to mark
        try:
            while not self._closing and self._current.get(event_id) is me:
                waiter.clear()
                held = await self._held.pending(chat)
                late = time.monotonic() >= deadline
                if held and (late or not expects_reply or any(h.quote == event_id for h in held)):
                    if not is_open():
                        return None  # WeChat went away: leave the reply for the retry
                    if t is None:
                        t = texts(await self._languages.of_chat(chat))
                    plan = plan_answer(held, event_id, t)
                    if await self._held.take(plan.ids):
                        self._given[event_id] = (time.monotonic() + ANSWER_MEMORY_S, plan.payload)
                        return plan.payload
                    continue  # another request took part of it: look again
                if late or not expects_reply:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout=min(self._poll_s, deadline - time.monotonic()))
            return None
        finally:
            if self._current.get(event_id) is me:
                del self._current[event_id]
            waiters = self._waiters.get(chat)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[chat]

    def close(self) -> None:
        """Shutting down: waiting requests answer at once (their replies stay held)."""
        self._closing = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    async def expire(self) -> int:
        return await self._held.expire(timedelta(days=HOLD_DAYS))
