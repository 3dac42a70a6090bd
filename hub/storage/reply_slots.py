"""Reply slots: how many answers an inbound message still allows, and until when.

Some platforms only let a bot answer: each reply names the message it answers, within a
window after it, a few times at most. A row per inbound message counts what was used; taking
a slot is one conditional UPDATE (`used < limit AND closes_at > now`), so two processes
answering the same chat never spend more than the platform allows, and the count survives
restarts. Storage knows no platform: the channel gives the window and the limit.

Opening and taking go through the batch writer: a burst of messages and replies shares its
commits with the inbox's, instead of each taking SQLite's write lock on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from hub.storage.db import Database, utcnow
from hub.storage.models import reply_slots


@dataclass(frozen=True, slots=True)
class Slot:
    """One reply allowed: the message it answers and its sequence number (1, 2, ...)."""

    msg_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class _Take:
    chat: str
    msg_id: str | None  # its own message first, when it names one
    opens: tuple[datetime, datetime] | None  # open that message first (opened_at, closes_at)
    newest: bool  # else a slot of the chat's newest message that still has one


# How often a take of the newest message looks again after another process spent it first.
NEWEST_TRIES = 3


class ReplySlotRepo:
    def __init__(self, db: Database, *, limit: int = 5) -> None:
        self._db = db
        self.limit = limit
        # Kinds are per repository: two repos on one database keep their own settings.
        self._k_open = f"slots.open:{id(self)}"
        self._k_take = f"slots.take:{id(self)}"
        self._k_close = f"slots.close:{id(self)}"
        db.writer.register_sync(self._k_open, self._open_batch)
        db.writer.register_sync(self._k_take, self._take_batch)
        db.writer.register_sync(self._k_close, self._close_batch)
        # Built once: every batch runs them, and a statement kept is compiled once.
        when = reply_slots.c.closes_at.type
        self._insert = db.insert(reply_slots).on_conflict_do_nothing(index_elements=["msg_id"])
        self._take = (
            update(reply_slots)
            .where(
                reply_slots.c.msg_id == bindparam("b_msg"),
                reply_slots.c.chat == bindparam("b_chat"),
                reply_slots.c.used < bindparam("b_limit"),
                reply_slots.c.closes_at > bindparam("b_now", type_=when),
            )
            .values(used=reply_slots.c.used + 1)
            .returning(reply_slots.c.used)
        )
        self._newest = (
            select(reply_slots.c.msg_id)
            .where(
                reply_slots.c.chat == bindparam("b_chat"),
                reply_slots.c.used < bindparam("b_limit"),
                reply_slots.c.closes_at > bindparam("b_now", type_=when),
            )
            .order_by(reply_slots.c.opened_at.desc())
            .limit(1)
        )
        self._close = (
            update(reply_slots)
            .where(reply_slots.c.msg_id == bindparam("b_msg"))
            .values(closes_at=bindparam("b_now", type_=when))
        )

    async def open(self, msg_id: str, chat: str, opened_at: datetime, closes_at: datetime) -> None:
        """Record an inbound message that may be answered until `closes_at` (a repeat is a no-op)."""
        await self._db.writer.submit(self._k_open, (msg_id, chat, opened_at, closes_at))

    async def take(self, msg_id: str, chat: str) -> Slot | None:
        """One reply to `msg_id` of `chat`, if its window is open and its count not spent."""
        return await self._submit_take(_Take(chat, msg_id, None, newest=False))

    async def take_latest(self, chat: str) -> Slot | None:
        """One reply to the newest message of `chat` that still allows one."""
        return await self._submit_take(_Take(chat, None, None, newest=True))

    async def take_reply(
        self, chat: str, msg_id: str | None, opens: tuple[datetime, datetime] | None = None
    ) -> Slot | None:
        """One reply to `msg_id` (opened first with `opens`, when given), else to the chat's
        newest message that still allows one: one write, whichever it comes to."""
        return await self._submit_take(_Take(chat, msg_id, opens, newest=True))

    async def close(self, msg_id: str) -> None:
        """The platform refuses replies to `msg_id` already: no more slots for it."""
        await self._db.writer.submit(self._k_close, msg_id)

    async def expire(self, older_than: timedelta) -> int:
        """Forget messages whose window closed long ago; returns how many."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(delete(reply_slots).where(reply_slots.c.closes_at < utcnow() - older_than))
        return int(result.rowcount or 0)

    # --- in the writer's transaction ---------------------------------------------------------

    async def _submit_take(self, take: _Take) -> Slot | None:
        slot: Slot | None = await self._db.writer.submit(self._k_take, take)
        return slot

    def _open_batch(self, conn: Connection, items: list[tuple[str, str, datetime, datetime]]) -> Sequence[None]:
        rows = [{"msg_id": m, "chat": c, "opened_at": o, "closes_at": e, "used": 0} for m, c, o, e in items]
        conn.execute(self._insert, rows[0] if len(rows) == 1 else rows)
        return [None] * len(items)

    def _take_batch(self, conn: Connection, items: list[_Take]) -> Sequence[Slot | None]:
        now = utcnow()
        opens = [
            {"msg_id": t.msg_id, "chat": t.chat, "opened_at": t.opens[0], "closes_at": t.opens[1], "used": 0}
            for t in items
            if t.opens is not None and t.msg_id
        ]
        if opens:
            conn.execute(self._insert, opens[0] if len(opens) == 1 else opens)
        # One at a time, in order: each sees what the ones before it spent.
        return [self._take_one(conn, t, now) for t in items]

    def _take_one(self, conn: Connection, take: _Take, now: datetime) -> Slot | None:
        if take.msg_id:
            slot = self._spend(conn, take.msg_id, take.chat, now)
            if slot is not None or not take.newest:
                return slot
        for _ in range(NEWEST_TRIES):
            params = {"b_chat": take.chat, "b_limit": self.limit, "b_now": now}
            msg_id = conn.execute(self._newest, params).scalar()
            if msg_id is None:
                return None
            slot = self._spend(conn, str(msg_id), take.chat, now)
            if slot is not None:
                return slot
            # Another process spent the last slot between the look and the take: look again.
        return None

    def _spend(self, conn: Connection, msg_id: str, chat: str, now: datetime) -> Slot | None:
        params: dict[str, Any] = {"b_msg": msg_id, "b_chat": chat, "b_limit": self.limit, "b_now": now}
        used = conn.execute(self._take, params).scalar()
        return Slot(msg_id, int(used)) if used is not None else None

    def _close_batch(self, conn: Connection, msg_ids: list[str]) -> Sequence[None]:
        now = utcnow()
        conn.execute(self._close, [{"b_msg": m, "b_now": now} for m in msg_ids])
        return [None] * len(msg_ids)
