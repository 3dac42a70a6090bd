"""One leader per cluster for work only one process may do (Telegram long polling, a long
connection to a platform).

On PostgreSQL the leader holds a session advisory lock on a dedicated connection while it
works; a process that dies drops the connection and with it the lock, and another process
takes over. Non-holders retry every few seconds. On SQLite there is one process per database:
it is always the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.storage.db import Database, advisory_lock

log = logging.getLogger("hub.leader")


def lock_key(name: str) -> int:
    """A stable 64-bit advisory lock key per name."""
    digest = hashlib.sha256(f"hub:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def leader_lock(
    db: Database,
    name: str,
    work: Callable[[], Awaitable[None]],
    *,
    retry_s: float = 5.0,
    keepalive_s: float = 10.0,
    on_standby: Callable[[], None] | None = None,
) -> None:
    """Wait to be the leader for `name`, then run `work()` while leading; returns when it
    returns, raises what it raises. The lock connection is checked every `keepalive_s`: when
    it is gone (the lock with it), `work` is cancelled and the error raised, before another
    process starts doing the same. `on_standby` is called each time the lock is held elsewhere.
    """
    if db.is_sqlite:
        await work()
        return
    key = lock_key(name)
    async with db.engine.connect() as conn:
        try:
            while not await advisory_lock(conn, key):
                await conn.commit()
                if on_standby is not None:
                    on_standby()
                await asyncio.sleep(retry_s)
            await conn.commit()  # the lock is per session: no transaction stays open
            log.info("event=leader name=%s", name)
            await _work_while_held(conn, work, keepalive_s)
        finally:
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()


async def _work_while_held(conn: AsyncConnection, work: Callable[[], Awaitable[None]], keepalive_s: float) -> None:
    task = asyncio.ensure_future(work())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=keepalive_s)
            if done:
                task.result()
                return
            await conn.execute(text("SELECT 1"))
            await conn.commit()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
