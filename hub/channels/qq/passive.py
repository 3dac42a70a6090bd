"""QQ's passive replies: each answer names the message it answers (msg_id) with a fresh
msg_seq, at most 5 per msg_id, within 5 min of a group message or 60 min of a private one.

The counts live in the reply_slots table (one row per inbound message), so processes sharing
PostgreSQL and a restarted hub never overspend a msg_id. A reply whose own msg_id is spent or
expired takes a slot of the chat's newest message that still has one; when there is none,
the sender raises AwaitingUser and the outbox parks the message as `waiting` until the chat
writes again (the webhook then releases it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.events import ChatRef, Event
from hub.storage.reply_slots import ReplySlotRepo, Slot

# Seconds a message may be answered, by chat kind (QQ's rule); tests pass shorter ones.
WINDOWS: Mapping[str, float] = {"private": 3600.0, "group": 300.0}
REPLIES_PER_MSG = 5
# Keep clear of the platform's own deadline: a reply sent on the edge could arrive late.
MARGIN_S = 20.0
# How long a closed window's row is kept (retries of old events still find it spent).
KEEP = timedelta(days=8)
# How many msg_ids this process remembers having opened.
OPENED_KEPT = 10_000


class PassiveReplies:
    def __init__(self, slots: ReplySlotRepo, windows: Mapping[str, float] | None = None) -> None:
        self._slots = slots
        self.windows = {**WINDOWS, **(windows or {})}
        # The msg_ids this process opened, newest last: a reply to one of them need not open
        # it again (one write less per reply). Bounded; forgetting one only costs that write.
        self._opened: dict[str, None] = {}

    def closes_at(self, kind: str, msg_at: datetime) -> datetime:
        window = self.windows.get(kind, WINDOWS["group"])
        return msg_at + timedelta(seconds=window - min(MARGIN_S, window / 10))

    async def opened(self, event: Event) -> None:
        """A new message came in: it may be answered until its window closes."""
        msg_id = event.context.get("msg_id")
        if isinstance(msg_id, str) and msg_id:
            at = _msg_at(event.context) or event.received_at
            await self._slots.open(msg_id, str(event.chat), at, self.closes_at(event.chat.kind, at))
            self._remember(msg_id)

    async def take(self, target: ChatRef, context: Mapping[str, Any] | None) -> Slot | None:
        """A slot for one reply to `target`: its own msg_id first, else the chat's newest."""
        msg_id = (context or {}).get("msg_id")
        if not (isinstance(msg_id, str) and msg_id):
            return await self._slots.take_latest(str(target))
        opens: tuple[datetime, datetime] | None = None
        at = _msg_at(context or {})
        if at is not None and msg_id not in self._opened:
            # The inbound side opens it; after a crash between the two (or in another
            # process), the reply opens it, in the same write as its take.
            opens = (at, self.closes_at(target.kind, at))
        slot = await self._slots.take_reply(str(target), msg_id, opens)
        if opens is not None:
            self._remember(msg_id)
        return slot

    def _remember(self, msg_id: str) -> None:
        self._opened[msg_id] = None
        if len(self._opened) > OPENED_KEPT:
            del self._opened[next(iter(self._opened))]

    async def close(self, msg_id: str) -> None:
        await self._slots.close(msg_id)

    async def expire(self) -> int:
        return await self._slots.expire(KEEP)


def _msg_at(context: Mapping[str, Any]) -> datetime | None:
    value = context.get("msg_at")
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None
