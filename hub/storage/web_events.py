"""Messages waiting for a web chat page, and the signal that wakes its event stream.

On PostgreSQL the signal crosses processes with LISTEN/NOTIFY (the page's stream may be open
on another process than the one that stored the message); on SQLite it stays in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, text, update

from hub.storage.db import Database, utcnow
from hub.storage.models import web_events

log = logging.getLogger("hub.storage")
CHANNEL = "hub_web_events"


class WebEventRepo:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._listener: Any = None
        self._stopping = False
        self._listen_task: asyncio.Task[None] | None = None

    async def add(self, session: str, items: list[dict[str, Any]]) -> int:
        async with self._db.engine.begin() as conn:
            row_id = (
                await conn.execute(
                    web_events.insert()
                    .values(session=session, payload={"items": items}, created_at=utcnow())
                    .returning(web_events.c.id)
                )
            ).scalar_one()
            if not self._db.is_sqlite:
                await conn.execute(text("SELECT pg_notify(:c, :s)"), {"c": CHANNEL, "s": session})
        self._wake(session)
        return int(row_id)

    async def take_undelivered(self, session: str) -> list[list[dict[str, Any]]]:
        """Claim this session's undelivered messages, oldest first (each goes to one stream)."""
        return [items for _id, items in await self.claim(session)]

    async def give_back(self, ids: list[int]) -> None:
        """Messages claimed by a stream that could not write them: undelivered again."""
        if not ids:
            return
        async with self._db.engine.begin() as conn:
            await conn.execute(update(web_events).where(web_events.c.id.in_(ids)).values(delivered_at=None))

    async def claim(self, session: str) -> list[tuple[int, list[dict[str, Any]]]]:
        """Like take_undelivered, with each message's row id (for give_back)."""
        async with self._db.engine.begin() as conn:
            ids = [
                r.id
                for r in await conn.execute(
                    select(web_events.c.id)
                    .where(web_events.c.session == session, web_events.c.delivered_at.is_(None))
                    .order_by(web_events.c.id)
                    .limit(100)
                )
            ]
            if not ids:
                return []
            rows = (
                await conn.execute(
                    update(web_events)
                    .where(web_events.c.id.in_(ids), web_events.c.delivered_at.is_(None))
                    .values(delivered_at=utcnow())
                    .returning(web_events.c.id, web_events.c.payload)
                )
            ).all()
        return [(int(r.id), r.payload["items"]) for r in sorted(rows, key=lambda r: r.id)]

    async def expire(self, keep_hours: int = 48) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                delete(web_events).where(web_events.c.created_at < utcnow() - timedelta(hours=keep_hours))
            )

    def waiter(self, session: str) -> asyncio.Event:
        ev = asyncio.Event()
        self._waiters[session].add(ev)
        return ev

    def release(self, session: str, ev: asyncio.Event) -> None:
        self._waiters[session].discard(ev)
        if not self._waiters[session]:
            del self._waiters[session]

    def _wake(self, session: str) -> None:
        for ev in self._waiters.get(session, ()):
            ev.set()

    def wake_all(self) -> None:
        for evs in list(self._waiters.values()):
            for ev in evs:
                ev.set()

    async def start(self) -> None:
        if not self._db.is_sqlite:
            self._stopping = False
            self._listen_task = asyncio.create_task(self._listen(), name="web-events-listen")

    async def _listen(self) -> None:
        import asyncpg

        dsn = self._db.url.replace("postgresql+asyncpg://", "postgresql://", 1)
        while not self._stopping:
            try:
                self._listener = await asyncpg.connect(dsn)
                await self._listener.add_listener(CHANNEL, lambda _c, _p, _ch, session: self._wake(session))
                while not self._stopping and not self._listener.is_closed():  # noqa: ASYNC110 - also watches the connection
                    await asyncio.sleep(5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event=listen_failed error=%r", exc)
                await asyncio.sleep(2)
            finally:
                if self._listener is not None and not self._listener.is_closed():
                    with contextlib.suppress(Exception):
                        await self._listener.close()

    async def stop(self) -> None:
        self._stopping = True
        self.wake_all()
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
