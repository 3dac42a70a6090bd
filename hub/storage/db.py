"""The engine, dialect helpers, and the batching writer that makes one commit serve many events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, String, func, literal, text, type_coerce
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState

log = logging.getLogger("hub.storage")
T = TypeVar("T")
R = TypeVar("R")


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_transient(exc: BaseException) -> bool:
    """The database refused or could not be reached (busy, disk full, connection lost): worth
    trying the same work again later, unlike a constraint or a bad statement (a bug)."""
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.ProgrammingError | sa_exc.DataError):
        return False
    return isinstance(exc, sa_exc.DBAPIError)


class Database:
    """One engine for the process; repositories take it in their constructor."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
            # Opening an aiosqlite connection costs a thread and the pragmas: keep enough open
            # that a burst of concurrent reads reuses them instead of opening and closing more.
            kwargs.update(pool_size=20, max_overflow=40)
            # The pool's own reset is a rollback after every commit: a trip to the
            # connection's thread for nothing. _sqlite_reset rolls back only what is open.
            kwargs["pool_reset_on_return"] = None
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
        # Statement parameters are messages and tokens: never in an error's text (and so a log).
        self.engine: AsyncEngine = create_async_engine(url, hide_parameters=True, **kwargs)
        if self.is_sqlite:
            sa_event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            sa_event.listen(self.engine.sync_engine, "reset", _sqlite_reset)
        self.writer = BatchWriter(self.engine)

    def now(self, after_s: float = 0.0) -> ColumnElement[datetime]:
        """The database's clock (plus `after_s`), for lease deadlines and their expiry checks.

        Every host of a cluster then agrees on when a lease ends, whatever its own clock says.
        SQLite gets the text it stores for a naive UTC datetime (six decimals), so stored
        deadlines compare as text and read back like any other time.
        """
        # Imported here: models imports nothing from this module, but keep the engine module light.
        from hub.storage.models import UTCDateTime

        expr: ColumnElement[Any]
        if self.is_sqlite:
            stamp = func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{after_s:+.6f} seconds", type_=String())
            expr = stamp.concat(literal("000"))
        else:
            expr = func.now() + timedelta(seconds=after_s) if after_s else func.now()
        return type_coerce(expr, UTCDateTime())

    def insert(self, table: Any) -> Any:
        """An INSERT that knows ON CONFLICT for this dialect."""
        # Imported here: the PostgreSQL dialect costs ~2 MB and 40 ms at every SQLite start.
        if self.is_sqlite:
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(table)
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)

    async def start(self) -> None:
        await self.writer.start()

    async def close(self) -> None:
        await self.writer.stop()
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run while the one writer commits; NORMAL sync is durable across process
    # crashes (only an OS crash can lose the last commits).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_reset(dbapi_conn: Any, _record: Any, state: PoolResetState) -> None:
    """A connection back in the pool: roll back a transaction still open on it (as the pool
    would), and send nothing when none is (after a commit, or a read)."""
    if state.asyncio_safe and dbapi_conn.driver_connection.in_transaction:
        dbapi_conn.rollback()


BatchFn = Callable[[AsyncConnection, list[Any]], Awaitable[Sequence[Any]]]


class BatchWriter:
    """Collects writes of one kind and commits whatever arrived meanwhile in one transaction.

    `await submit(kind, item)` returns when the item is committed (its result, per the kind's
    function). While one commit is in flight the next batch gathers, so batches grow with load
    and an idle hub commits at once.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._kinds: dict[str, BatchFn] = {}
        self._pending: dict[str, list[tuple[Any, asyncio.Future[Any]]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0

    def register(self, kind: str, fn: BatchFn) -> None:
        """`fn(conn, items)` writes all items and returns one result per item, in order."""
        self._kinds[kind] = fn
        self._pending.setdefault(kind, [])

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="batch-writer")

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, kind: str, item: Any) -> Any:
        if self._task is None:
            # Not started (a CLI command, a test): write at once.
            async with self._engine.begin() as conn:
                return (await self._kinds[kind](conn, [item]))[0]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[kind].append((item, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = {k: v for k, v in self._pending.items() if v}
            for k in batch:
                self._pending[k] = []
            if batch:
                await self._flush(batch)
            elif self._closing:
                return

    async def _flush(self, batch: dict[str, list[tuple[Any, asyncio.Future[Any]]]]) -> None:
        try:
            results: dict[str, Sequence[Any]] = {}
            async with self._engine.begin() as conn:
                for kind, entries in batch.items():
                    results[kind] = await self._kinds[kind](conn, [i for i, _ in entries])
            self.commits += 1
        except Exception:
            # One bad item must not sink the others: retry each alone and fail only the culprit.
            log.exception("event=batch_failed kinds=%s size=%d", ",".join(batch), sum(map(len, batch.values())))
            for kind, entries in batch.items():
                for item, fut in entries:
                    try:
                        async with self._engine.begin() as conn:
                            res = (await self._kinds[kind](conn, [item]))[0]
                        if not fut.done():
                            fut.set_result(res)
                    except Exception as exc:
                        if not fut.done():
                            fut.set_exception(exc)
            return
        for kind, entries in batch.items():
            for (_, fut), res in zip(entries, results[kind], strict=True):
                if not fut.done():
                    fut.set_result(res)


async def advisory_lock(conn: AsyncConnection, key: int) -> bool:
    """Try a PostgreSQL session-level advisory lock on `conn`; SQLite always has it."""
    if conn.dialect.name != "postgresql":
        return True
    return bool((await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar())
