"""The engine, dialect helpers, and the batching writer that makes one commit serve many events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, String, create_engine, func, literal, text, type_coerce
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState

from hub import jsoncodec

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
        self._now: dict[float, ColumnElement[datetime]] = {}
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
        self.engine: AsyncEngine = create_async_engine(
            url, hide_parameters=True, json_serializer=jsoncodec.dumps, json_deserializer=jsoncodec.loads, **kwargs
        )
        thread_engine: Engine | None = None
        self._wal: Path | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        if self.is_sqlite:
            sa_event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            sa_event.listen(self.engine.sync_engine, "reset", _sqlite_reset)
            if path and path != ":memory:":
                thread_engine = _thread_engine(self.engine)
                self._wal = Path(path + "-wal")
        self.writer = BatchWriter(self.engine, thread_engine)

    def now(self, after_s: float = 0.0) -> ColumnElement[datetime]:
        """The database's clock (plus `after_s`), for lease deadlines and their expiry checks.

        Every host of a cluster then agrees on when a lease ends, whatever its own clock says.
        SQLite gets the text it stores for a naive UTC datetime (six decimals), so stored
        deadlines compare as text and read back like any other time.
        """
        cached = self._now.get(after_s)
        if cached is not None:
            return cached
        # Imported here: models imports nothing from this module, but keep the engine module light.
        from hub.storage.models import UTCDateTime

        expr: ColumnElement[Any]
        if self.is_sqlite:
            stamp = func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{after_s:+.6f} seconds", type_=String())
            expr = stamp.concat(literal("000"))
        else:
            expr = func.now() + timedelta(seconds=after_s) if after_s else func.now()
        # Kept: the same few offsets (the leases) are asked for by every batch.
        if len(self._now) < 64:
            self._now[after_s] = type_coerce(expr, UTCDateTime())
            return self._now[after_s]
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
        if self._wal is not None and self._checkpointer is None:
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="sqlite-checkpoint")

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        await self.writer.stop()
        await self.engine.dispose()

    async def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database file in the background, about once a second
        after writes. Left to SQLite, the commit that crosses its threshold does it, and the
        acks waiting on that commit wait 10-80 ms longer (one commit in a few hundred)."""
        assert self._wal is not None
        done_at = 0.0
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            try:
                written = self._wal.stat().st_mtime
            except FileNotFoundError:
                continue
            if written <= done_at:
                continue  # idle: nothing written since the last one
            done_at = written
            try:
                async with self.engine.connect() as conn:
                    # PASSIVE: copies what no reader still needs and never blocks a writer.
                    await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:
                log.warning("event=sqlite_checkpoint_failed error=%r", exc)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run while the one writer commits; NORMAL sync is durable across process
    # crashes (only an OS crash can lose the last commits).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    # The hub checkpoints in the background (Database._checkpoint_loop); a commit does it
    # itself only if the WAL grows this far regardless (~40 MB: that loop is not running).
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cur.close()


def _sqlite_reset(dbapi_conn: Any, _record: Any, state: PoolResetState) -> None:
    """A connection back in the pool: roll back a transaction still open on it (as the pool
    would), and send nothing when none is (after a commit, or a read)."""
    if state.asyncio_safe and dbapi_conn.driver_connection.in_transaction:
        dbapi_conn.rollback()


def _thread_engine(engine: AsyncEngine) -> Engine:
    """A synchronous engine on the same SQLite file, for the batch writer's own thread.

    Through aiosqlite every cursor, statement, fetch and commit is a hop to its thread and back
    (a queue put, a wake-up, a callback into the loop); a batch of a dozen statements made some
    forty. On this engine the whole batch is one hop. Listeners on the main engine's statements
    (a test's injected fault, say) see this engine's statements too.
    """
    sync_url = engine.url.set(drivername="sqlite")
    thread = create_engine(
        sync_url,
        hide_parameters=True,
        json_serializer=jsoncodec.dumps,
        json_deserializer=jsoncodec.loads,
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
    )
    sa_event.listen(thread, "connect", _sqlite_pragmas)
    main = engine.sync_engine.dispatch

    # The main engine's own listeners only: those on the Engine class hear this engine already.
    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        for fn in main.before_cursor_execute.listeners:
            fn(conn, cursor, statement, params, context, many)

    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        for fn in main.after_cursor_execute.listeners:
            fn(conn, cursor, statement, params, context, many)

    sa_event.listen(thread, "before_cursor_execute", before)
    sa_event.listen(thread, "after_cursor_execute", after)
    return thread


# The background checkpoint's period, and the WAL size (pages) at which a commit checkpoints.
CHECKPOINT_S = 1.0
WAL_AUTOCHECKPOINT_PAGES = 10_000
# Items of one kind in one transaction, at most.
MAX_BATCH = 256
BatchFn = Callable[[AsyncConnection, list[Any]], Awaitable[Sequence[Any]]]
SyncBatchFn = Callable[[Connection, list[Any]], Sequence[Any]]
_Entries = list[tuple[Any, "asyncio.Future[Any]"]]


class BatchWriter:
    """Collects writes of one kind and commits whatever arrived meanwhile in one transaction.

    `await submit(kind, item)` returns when the item is committed (its result, per the kind's
    function). Once woken the writer commits what is pending at once; while that commit is in
    flight the next batch gathers, so batches grow with load.

    Kinds registered with `register_sync` are plain functions on a synchronous connection: on
    a SQLite file they run in the writer's own thread, the whole batch at once; elsewhere in
    the async transaction, beside the async kinds.
    """

    def __init__(self, engine: AsyncEngine, thread_engine: Engine | None = None) -> None:
        self._engine = engine
        self._thread_engine = thread_engine
        self._thread: ThreadPoolExecutor | None = None
        self._conn: Connection | None = None  # used in the writer's thread only
        self._kinds: dict[str, BatchFn] = {}
        self._sync: dict[str, SyncBatchFn] = {}
        self._pending: dict[str, _Entries] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0

    def register(self, kind: str, fn: BatchFn) -> None:
        """`fn(conn, items)` writes all items and returns one result per item, in order."""
        self._kinds[kind] = fn
        self._pending.setdefault(kind, [])

    def register_sync(self, kind: str, fn: SyncBatchFn) -> None:
        """Like `register`, for a function on a synchronous connection (it must not block on
        anything but the database)."""
        self._sync[kind] = fn
        self._pending.setdefault(kind, [])

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            if self._thread_engine is not None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-writer")
            self._task = asyncio.create_task(self._run(), name="batch-writer")

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._thread is not None:
            assert self._thread_engine is not None
            # Its connection was opened in that thread: closed there too.
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close_thread)
            self._thread.shutdown()
            self._thread = None

    async def submit(self, kind: str, item: Any) -> Any:
        if self._task is None:
            # Not started (a CLI command, a test): write at once.
            async with self._engine.begin() as conn:
                return (await self._call(conn, kind, [item]))[0]
        # The writer's own loop: asking for the running one costs a system call (getpid) each time.
        fut: asyncio.Future[Any] = self._task.get_loop().create_future()
        self._pending[kind].append((item, fut))
        self._wake.set()
        return await fut

    async def _call(self, conn: AsyncConnection, kind: str, items: list[Any]) -> Sequence[Any]:
        sync = self._sync.get(kind)
        if sync is not None:
            return await conn.run_sync(sync, items)
        return await self._kinds[kind](conn, items)

    async def _run(self) -> None:
        while True:
            # No wait to gather more: what arrives while a commit is in flight makes the next
            # batch, so batches grow with load by themselves, and a lone write (a chat's first
            # token waits on it) goes at once.
            await self._wake.wait()
            self._wake.clear()
            batch: dict[str, _Entries] = {}
            for k, entries in self._pending.items():
                if entries:
                    # A burst is committed in bounded transactions: an ack waits for one of
                    # these, not for a thousand rows.
                    batch[k], self._pending[k] = entries[:MAX_BATCH], entries[MAX_BATCH:]
                    if self._pending[k]:
                        self._wake.set()
            if batch:
                try:
                    await self._flush(batch)
                except Exception as exc:
                    # Not the database (each item was tried alone): a bug. The waiters hear of
                    # it, and the writer goes on.
                    log.exception("event=batch_writer_failed kinds=%s", ",".join(batch))
                    for entries in batch.values():
                        for _, fut in entries:
                            _settle(fut, exc=exc)
                if self._closing:
                    # Stopping: once more, for what came during this commit (else it would wait
                    # for a wake-up that never comes).
                    self._wake.set()
            elif self._closing:
                return

    async def _flush(self, batch: dict[str, _Entries]) -> None:
        if self._thread is not None:
            threaded = {k: v for k, v in batch.items() if k in self._sync}
            if threaded:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._thread, self._flush_in_thread, loop, threaded)
            batch = {k: v for k, v in batch.items() if k not in self._sync}
            if not batch:
                return
        try:
            results: dict[str, Sequence[Any]] = {}
            async with self._engine.begin() as conn:
                for kind, entries in batch.items():
                    results[kind] = await self._call(conn, kind, [i for i, _ in entries])
            self.commits += 1
        except Exception:
            # One bad item must not sink the others: retry each alone and fail only the culprit.
            log.exception("event=batch_failed kinds=%s size=%d", ",".join(batch), sum(map(len, batch.values())))
            for kind, entries in batch.items():
                for item, fut in entries:
                    try:
                        async with self._engine.begin() as conn:
                            res = (await self._call(conn, kind, [item]))[0]
                        _settle(fut, res)
                    except Exception as exc:
                        _settle(fut, exc=exc)
            return
        _settle_all(batch, results)

    def _thread_conn(self) -> Connection:
        """The writer thread's connection, kept between batches (a checkout and a return to the
        pool per batch cost more than the batch's own statements); a new one after a failure."""
        assert self._thread_engine is not None
        if self._conn is None:
            self._conn = self._thread_engine.connect()
        return self._conn

    def _drop_thread_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.exception("event=writer_connection_close_failed")
            self._conn = None

    def _close_thread(self) -> None:
        assert self._thread_engine is not None
        self._drop_thread_conn()
        self._thread_engine.dispose()

    def _flush_in_thread(self, loop: asyncio.AbstractEventLoop, batch: dict[str, _Entries]) -> None:
        """The batch in one transaction, in the writer's thread; its futures are settled in the
        loop's thread, all in one callback."""
        assert self._thread_engine is not None
        try:
            results: dict[str, Sequence[Any]] = {}
            conn = self._thread_conn()
            with conn.begin():
                for kind, entries in batch.items():
                    results[kind] = self._sync[kind](conn, [i for i, _ in entries])
            self.commits += 1
        except Exception:
            log.exception("event=batch_failed kinds=%s size=%d", ",".join(batch), sum(map(len, batch.values())))
            self._drop_thread_conn()
            outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for kind, entries in batch.items():
                for item, fut in entries:
                    try:
                        with self._thread_engine.begin() as alone:
                            outcomes.append((fut, self._sync[kind](alone, [item])[0], None))
                    except Exception as exc:
                        outcomes.append((fut, None, exc))
            loop.call_soon_threadsafe(_settle_each, outcomes)
            return
        # Settled from here rather than when the writer resumes: the waiting acks go out first.
        loop.call_soon_threadsafe(_settle_all, batch, results)


def _settle(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _settle_each(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in outcomes:
        _settle(fut, result, exc)


def _settle_all(batch: dict[str, _Entries], results: dict[str, Sequence[Any]]) -> None:
    for kind, entries in batch.items():
        for (_, fut), res in zip(entries, results[kind], strict=True):
            if not fut.done():
                fut.set_result(res)


async def advisory_lock(conn: AsyncConnection, key: int) -> bool:
    """Try a PostgreSQL session-level advisory lock on `conn`; SQLite always has it."""
    if conn.dialect.name != "postgresql":
        return True
    return bool((await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar())
