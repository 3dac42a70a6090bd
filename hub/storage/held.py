"""Held replies: messages waiting for the user's next message, on platforms that can only answer.

A channel in a reply-only mode (WeChat's passive replies) hands what the outbox gives it to
this table, and the next request from that user takes it. Taking is a DELETE that must remove
every row it names, so two processes answering the same user never give one reply twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select

from hub.storage.db import Database, utcnow
from hub.storage.models import held_replies


@dataclass(frozen=True, slots=True)
class HeldReply:
    id: int
    chat: str
    quote: str | None
    payload: Mapping[str, Any]
    created_at: datetime


def dedupe_key(chat: str, quote: str | None, index: int, payload: Mapping[str, Any]) -> str:
    """A key that is the same when one outbox message is handed over twice (a crash, a retry)."""
    raw = json.dumps([chat, quote, index, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


class _Conflict(Exception):
    """Another process took one of the rows first: roll back and let the caller look again."""


class HeldReplyRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def hold_many(self, chat: str, quote: str | None, items: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        """Keep the parts of one reply for `chat`, in one transaction, as `(key, payload)` pairs.

        A part whose key is already held is skipped (the same reply handed over twice);
        returns how many were new.
        """
        stmt = (
            self._db.insert(held_replies)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(held_replies.c.id)
        )
        now = utcnow()
        new = 0
        async with self._db.engine.begin() as conn:
            for key, payload in items:
                row = {"chat": chat, "dedupe_key": key, "quote": quote, "payload": dict(payload), "created_at": now}
                new += (await conn.execute(stmt.values(row))).first() is not None
        return new

    async def pending(self, chat: str, limit: int = 50) -> list[HeldReply]:
        """What is held for a chat, oldest first."""
        q = select(held_replies).where(held_replies.c.chat == chat).order_by(held_replies.c.id).limit(limit)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [HeldReply(r.id, r.chat, r.quote, r.payload, r.created_at) for r in rows]

    async def take(self, ids: Sequence[int]) -> bool:
        """Remove these rows, all or none; False when another request took one of them first."""
        if not ids:
            return True
        try:
            async with self._db.engine.begin() as conn:
                result = await conn.execute(delete(held_replies).where(held_replies.c.id.in_(list(ids))))
                if result.rowcount != len(set(ids)):
                    raise _Conflict
        except _Conflict:
            return False
        return True

    async def count(self, chat: str) -> int:
        async with self._db.engine.connect() as conn:
            q = select(func.count()).select_from(held_replies).where(held_replies.c.chat == chat)
            return int((await conn.execute(q)).scalar_one())

    async def expire(self, older_than: timedelta) -> int:
        """Forget replies nobody came back for; returns how many."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(delete(held_replies).where(held_replies.c.created_at < utcnow() - older_than))
        return int(result.rowcount or 0)
