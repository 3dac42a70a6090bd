"""Reply slots: how many answers an inbound message still allows, and until when.

Some platforms only let a bot answer: each reply names the message it answers, within a
window after it, a few times at most. A row per inbound message counts what was used; taking
a slot is one conditional UPDATE (`used < limit AND closes_at > now`), so two processes
answering the same chat never spend more than the platform allows, and the count survives
restarts. Storage knows no platform: the channel gives the window and the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from hub.storage.db import Database, utcnow
from hub.storage.models import reply_slots


@dataclass(frozen=True, slots=True)
class Slot:
    """One reply allowed: the message it answers and its sequence number (1, 2, ...)."""

    msg_id: str
    seq: int


class ReplySlotRepo:
    def __init__(self, db: Database, *, limit: int = 5) -> None:
        self._db = db
        self.limit = limit

    async def open(self, msg_id: str, chat: str, opened_at: datetime, closes_at: datetime) -> None:
        """Record an inbound message that may be answered until `closes_at` (a repeat is a no-op)."""
        stmt = (
            self._db.insert(reply_slots)
            .values(msg_id=msg_id, chat=chat, opened_at=opened_at, closes_at=closes_at, used=0)
            .on_conflict_do_nothing(index_elements=["msg_id"])
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(stmt)

    async def take(self, msg_id: str, chat: str) -> Slot | None:
        """One reply to `msg_id` of `chat`, if its window is open and its count not spent."""
        now = utcnow()
        stmt = (
            update(reply_slots)
            .where(
                reply_slots.c.msg_id == msg_id,
                reply_slots.c.chat == chat,
                reply_slots.c.used < self.limit,
                reply_slots.c.closes_at > now,
            )
            .values(used=reply_slots.c.used + 1)
            .returning(reply_slots.c.used)
        )
        async with self._db.engine.begin() as conn:
            used = (await conn.execute(stmt)).scalar()
        return Slot(msg_id, int(used)) if used is not None else None

    async def take_latest(self, chat: str, *, tries: int = 3) -> Slot | None:
        """One reply to the newest message of `chat` that still allows one."""
        for _ in range(tries):
            now = utcnow()
            q = (
                select(reply_slots.c.msg_id)
                .where(reply_slots.c.chat == chat, reply_slots.c.used < self.limit, reply_slots.c.closes_at > now)
                .order_by(reply_slots.c.opened_at.desc())
                .limit(1)
            )
            async with self._db.engine.connect() as conn:
                msg_id = (await conn.execute(q)).scalar()
            if msg_id is None:
                return None
            slot = await self.take(str(msg_id), chat)
            if slot is not None:
                return slot
            # Another sender spent the last slot between the look and the take: look again.
        return None

    async def close(self, msg_id: str) -> None:
        """The platform refuses replies to `msg_id` already: no more slots for it."""
        async with self._db.engine.begin() as conn:
            await conn.execute(update(reply_slots).where(reply_slots.c.msg_id == msg_id).values(closes_at=utcnow()))

    async def expire(self, older_than: timedelta) -> int:
        """Forget messages whose window closed long ago; returns how many."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(delete(reply_slots).where(reply_slots.c.closes_at < utcnow() - older_than))
        return int(result.rowcount or 0)
