"""What must run once in a cluster: `leader_lock(db, name)`, held by one process at a time.

On PostgreSQL the lock is a session-level advisory lock on a connection of its own: a process
that dies drops the connection, and with it the lock, and a waiting process takes over within
`retry_s`. The holder checks its connection every `keepalive_s`; when the check fails, the
lock may already be another's, so `Leadership.lost` is set and the holder must stop. On
SQLite there is one process per database (the hub's flock): it is always the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.storage.db import Database, advisory_lock

log = logging.getLogger("hub.leader")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    digest = hashlib.sha256(f"hub:leader:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class Leadership:
    """Handed to the holder: `lost` is set when the lock can no longer be trusted."""

    name: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    # "standby" while waiting for the lock, "leader" while holding it.
    state: str = "standby"


@contextlib.asynccontextmanager
async def leader_lock(
    db: Database,
    name: str,
    *,
    retry_s: float = 5.0,
    keepalive_s: float = 10.0,
    on_standby: Leadership | None = None,
) -> AsyncIterator[Leadership]:
    """Wait until this process holds the lock `name`, then yield while it does.

    Pass `on_standby` to watch the state while waiting (it is the object yielded).
    """
    lead = on_standby or Leadership(name)
    if db.is_sqlite:
        lead.state = "leader"
        yield lead
        return
    key = lock_key(name)
    async with db.engine.connect() as conn:
        try:
            while not await advisory_lock(conn, key):
                await conn.commit()  # the lock is per session: no transaction stays open
                lead.state = "standby"
                await asyncio.sleep(retry_s)
            await conn.commit()
            lead.state = "leader"
            log.info("event=leader_acquired name=%s", name)
            watch = asyncio.create_task(_keepalive(conn, lead, keepalive_s), name=f"leader:{name}")
            try:
                yield lead
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch
        finally:
            lead.state = "standby"
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()
            log.info("event=leader_released name=%s", name)


async def _keepalive(conn: AsyncConnection, lead: Leadership, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await conn.execute(text("SELECT 1"))
            await conn.commit()
        except Exception as exc:
            log.warning("event=leader_lost name=%s error=%r", lead.name, exc)
            lead.lost.set()
            return
