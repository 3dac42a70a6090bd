"""leader_lock: one holder per name on PostgreSQL, takeover when it goes; always the leader on SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from harness import PG_ADMIN_DSN, eventually, pg_database

from hub.storage.db import Database
from hub.storage.leader import Leadership, leader_lock, lock_key


async def test_sqlite_is_always_the_leader(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    try:
        async with leader_lock(db, "x") as a, leader_lock(db, "x") as b:
            assert a.state == b.state == "leader" and not a.lost.is_set()
    finally:
        await db.close()


async def test_one_holder_on_postgresql_and_another_takes_over() -> None:
    async with pg_database() as url:
        dbs = [Database(url) for _ in range(2)]
        order: list[str] = []
        release = asyncio.Event()

        async def hold(i: int, lead: Leadership) -> None:
            async with leader_lock(dbs[i], "job", retry_s=0.1, on_standby=lead):
                order.append(f"lead{i}")
                if i == 0:
                    await release.wait()

        leads = [Leadership("job"), Leadership("job")]
        first = asyncio.create_task(hold(0, leads[0]))
        await eventually(lambda: order == ["lead0"])
        second = asyncio.create_task(hold(1, leads[1]))
        await asyncio.sleep(0.5)
        assert order == ["lead0"] and leads[1].state == "standby"
        release.set()
        await first
        await eventually(lambda: order == ["lead0", "lead1"])
        await second
        # Another name is another lock.
        async with leader_lock(dbs[0], "other") as a, leader_lock(dbs[1], "other2") as b:
            assert a.state == b.state == "leader"
        for db in dbs:
            await db.close()


async def test_a_holder_whose_connection_dies_is_told_it_lost_the_lock() -> None:
    async with pg_database() as url:
        db = Database(url)
        try:
            async with leader_lock(db, "ws", keepalive_s=0.2) as lead:
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
                await asyncio.wait_for(lead.lost.wait(), timeout=10)
        finally:
            await db.close()
        assert isinstance(lock_key("ws"), int)
