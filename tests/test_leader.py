"""leader_lock: one holder per name on PostgreSQL, takeover when it goes; always the leader on SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from harness import PG_ADMIN_DSN, eventually, pg_database

from hub.backoff import BackoffConfig
from hub.storage.db import Database
from hub.storage.leader import LeaderLoop, leader_lock, lock_key


async def test_sqlite_is_always_the_leader(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    ran: list[str] = []

    async def work(tag: str) -> None:
        ran.append(tag)

    try:
        await asyncio.gather(leader_lock(db, "x", lambda: work("a")), leader_lock(db, "x", lambda: work("b")))
        assert sorted(ran) == ["a", "b"]
    finally:
        await db.close()


async def test_one_holder_on_postgresql_and_another_takes_over() -> None:
    async with pg_database() as url:
        dbs = [Database(url) for _ in range(2)]
        order: list[str] = []
        waiting: list[int] = []
        release = asyncio.Event()

        async def hold(i: int) -> None:
            async def work() -> None:
                order.append(f"lead{i}")
                if i == 0:
                    await release.wait()

            await leader_lock(dbs[i], "job", work, retry_s=0.1, on_standby=lambda: waiting.append(i))

        first = asyncio.create_task(hold(0))
        await eventually(lambda: order == ["lead0"])
        second = asyncio.create_task(hold(1))
        await eventually(lambda: 1 in waiting)
        assert order == ["lead0"]
        release.set()
        await first
        await eventually(lambda: order == ["lead0", "lead1"])
        await second
        for db in dbs:
            await db.close()


async def test_a_holder_whose_lock_connection_dies_is_cancelled() -> None:
    async with pg_database() as url:
        db = Database(url)
        started = asyncio.Event()

        async def work() -> None:
            started.set()
            await asyncio.Event().wait()

        try:
            task = asyncio.create_task(leader_lock(db, "ws", work, keepalive_s=0.2))
            await asyncio.wait_for(started.wait(), timeout=10)
            name = url.rsplit("/", 1)[1]
            admin = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                # The backend holding the advisory lock goes away, as when its server drops it.
                await admin.execute(
                    "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND a.datname = $1",
                    name,
                )
            finally:
                await admin.close()
            with pytest.raises(Exception):  # noqa: B017 - the dead connection's own error
                await asyncio.wait_for(task, timeout=10)
        finally:
            await db.close()
        assert isinstance(lock_key("ws"), int)


async def test_a_leader_loop_reports_a_failure_and_leads_again_after_the_backoff(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")

    failures: list[str] = []

    class Loop(LeaderLoop):
        runs = 0

        async def lead(self) -> None:
            self.runs += 1
            if self.runs == 1:
                raise RuntimeError("the connection dropped")
            self.state = "running"
            await asyncio.Event().wait()

        def failed(self, exc: Exception) -> None:
            failures.append(f"{self.state}: {exc}")

    loop = Loop(db, "x", BackoffConfig(base=0.01, cap=0.01))
    task = asyncio.create_task(loop.run())
    try:
        await eventually(lambda: loop.runs == 2 and loop.state == "running")
        assert failures == ["failing: the connection dropped"]
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await db.close()
