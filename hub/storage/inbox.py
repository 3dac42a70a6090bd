"""The inbox: every inbound event is stored (deduplicated) before it is acked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.events import Event, event_from_dict, event_to_dict
from hub.storage.db import Database, utcnow
from hub.storage.models import inbox


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    event: Event
    attempts: int


class InboxRepo:
    def __init__(self, db: Database, holder: str, lease_s: float = 30.0) -> None:
        self._db = db
        self.holder = holder
        self.lease_s = lease_s
        # Kinds are per repository: two repos on one database keep their own settings.
        self._k_store = f"inbox.store:{id(self)}"
        self._k_done = f"inbox.done:{id(self)}"
        db.writer.register(self._k_store, self._store_batch)
        # Built once: building the statement (and its cache key) per event cost more than
        # running it.
        self._store = (
            db.insert(inbox)
            # The lease ends by the database's clock, the one every process checks it against.
            .values(lease_until=db.now(lease_s))
            .on_conflict_do_nothing(index_elements=["channel", "event_id"])
            .returning(inbox.c.id, inbox.c.channel, inbox.c.event_id)
        )
        db.writer.register(self._k_done, self._done_batch)

    async def store(self, event: Event) -> int | None:
        """Store one event; the row id when new, None when it is a duplicate. Batched."""
        result: int | None = await self._db.writer.submit(self._k_store, event)
        return result

    async def _store_batch(self, conn: AsyncConnection, events: list[Event]) -> Sequence[int | None]:
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for ev in events:
            key = (ev.channel, ev.id)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "channel": ev.channel,
                    "event_id": ev.id,
                    "chat": str(ev.chat),
                    "sender": ev.sender.key,
                    "payload": event_to_dict(ev),
                    "status": "pending",
                    "attempts": 0,
                    "holder": self.holder,
                    "received_at": ev.received_at,
                }
            )
        stmt = self._store
        new: dict[tuple[str, str], int] = {}
        if len(rows) == 1:
            for r in await conn.execute(stmt, rows[0]):
                new[(r.channel, r.event_id)] = r.id
        else:
            for r in await conn.execute(stmt, rows):
                new[(r.channel, r.event_id)] = r.id
        out: list[int | None] = []
        for ev in events:
            out.append(new.pop((ev.channel, ev.id), None))
        return out

    async def mark_done(self, row_id: int, error: str | None = None) -> None:
        await self._db.writer.submit(self._k_done, (row_id, error))

    async def _done_batch(self, conn: AsyncConnection, items: list[tuple[int, str | None]]) -> Sequence[None]:
        now = utcnow()
        ok = [i for i, e in items if e is None]
        if ok:
            await conn.execute(
                update(inbox)
                .where(inbox.c.id.in_(ok))
                .values(status="done", handled_at=now, holder=None, lease_until=None)
            )
        for row_id, err in items:
            if err is not None:
                await conn.execute(
                    update(inbox)
                    .where(inbox.c.id == row_id)
                    .values(status="failed", handled_at=now, error=err[:2000], holder=None, lease_until=None)
                )
        return [None] * len(items)

    async def renew(self, ids: Sequence[int]) -> None:
        """Extend this process's lease on events it is still handling."""
        if not ids:
            return
        # Rows locked by a write in flight (marking them done) are skipped, not waited for:
        # waiting could deadlock with that batch on PostgreSQL.
        mine = (
            select(inbox.c.id)
            .where(inbox.c.id.in_(list(ids)), inbox.c.holder == self.holder)
            .with_for_update(skip_locked=True)
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(inbox)
                .where(inbox.c.id.in_(mine.scalar_subquery()))
                .values(lease_until=self._db.now(self.lease_s))
            )

    async def claim_stalled(self, limit: int = 100, *, take_all: bool = False) -> list[InboxRow]:
        """Claim pending events whose holder's lease expired (or all pending, with take_all).

        `take_all` is for a process that knows it is the database's only user (SQLite at
        start): whatever is pending was left by its own previous life.
        """
        cond = [inbox.c.status == "pending"]
        if not take_all:
            cond.append(or_(inbox.c.lease_until.is_(None), inbox.c.lease_until < self._db.now()))
        sub = select(inbox.c.id).where(*cond).order_by(inbox.c.id).limit(limit).with_for_update(skip_locked=True)
        stmt = (
            update(inbox)
            .where(inbox.c.id.in_(sub.scalar_subquery()))
            # Not an attempt yet: a restart claims every pending row, and only the ones whose
            # handling starts (note_attempt) may count towards giving up.
            .values(holder=self.holder, lease_until=self._db.now(self.lease_s))
            .returning(inbox.c.id, inbox.c.payload, inbox.c.attempts)
        )
        async with self._db.engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        out = [InboxRow(r.id, event_from_dict(r.payload), r.attempts) for r in rows]
        out.sort(key=lambda r: r.id)
        return out

    async def note_attempt(self, row_id: int) -> None:
        """Count one handling of a recovered event (a poison event is given up after a few)."""
        async with self._db.engine.begin() as conn:
            await conn.execute(update(inbox).where(inbox.c.id == row_id).values(attempts=inbox.c.attempts + 1))

    async def backlog(self) -> int:
        async with self._db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).where(inbox.c.status == "pending"))).scalar() or 0)

    async def failures_since(self, since: datetime) -> int:
        """Events whose handling raised (not skill errors, which get an apology) since a time."""
        async with self._db.engine.connect() as conn:
            q = select(func.count()).where(inbox.c.status == "failed", inbox.c.handled_at >= since)
            return int((await conn.execute(q)).scalar() or 0)

    async def get(self, channel: str, event_id: str) -> dict[str, Any] | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(select(inbox).where(inbox.c.channel == channel, inbox.c.event_id == event_id))
            ).first()
        return dict(row._mapping) if row else None
