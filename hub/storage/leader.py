"""One leader per cluster for work only one process may do (Telegram long polling, a long
connection to a platform).

On PostgreSQL the leader holds a session advisory lock on a dedicated connection while it
works; a process that dies drops the connection and with it the lock, and another process
takes over. Non-holders retry every few seconds. On SQLite there is one process per database:
it is always the leader.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.backoff import Backoff, BackoffConfig
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


class LeaderLoop(abc.ABC):
    """Work only one process may do, for as long as its owner runs (Telegram long polling, a
    long connection): `run` waits to lead and calls `lead`; when that returns, fails or loses
    the lock, `failed` logs why, and after the backoff it waits to lead again, until cancelled.

    `state` is for status(): "connecting" at first, "standby" while another process leads,
    "failing" after a failure; `lead` sets the rest ("running" once it works).
    """

    def __init__(
        self, db: Database, name: str, backoff: BackoffConfig, *, lock_retry_s: float = 5.0, keepalive_s: float = 10.0
    ) -> None:
        self._db = db
        self._lock_name = name
        self._backoff = Backoff(backoff)
        self._lock_retry = lock_retry_s
        self._keepalive = keepalive_s
        self.state = "connecting"

    async def run(self) -> None:
        while True:
            try:
                await leader_lock(
                    self._db,
                    self._lock_name,
                    self.lead,
                    retry_s=self._lock_retry,
                    keepalive_s=self._keepalive,
                    on_standby=self.standby,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.state = "failing"
                self.failed(exc)
                await self._backoff.asleep()

    @abc.abstractmethod
    async def lead(self) -> None:
        """The work, while this process leads (cancelled when the lock's connection goes)."""

    def standby(self) -> None:
        """Called each time the lock is held elsewhere."""
        self.state = "standby"

    def failed(self, exc: Exception) -> None:
        """Log a failure of `lead` or of the lock (called inside the `except`)."""
        log.warning("event=leader_work_failed name=%s error=%r", self._lock_name, exc)


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
