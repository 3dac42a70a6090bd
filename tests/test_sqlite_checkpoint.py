"""SQLite's WAL is copied back in the background, not by the commit an ack waits on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import event, text

from hub.storage import db as dbmod
from hub.storage.db import Database


async def _wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_commits_leave_the_checkpoint_to_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbmod, "CHECKPOINT_S", 0.05)
    path = tmp_path / "hub.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE blobs (b BLOB)"))
        assert (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar() == dbmod.WAL_AUTOCHECKPOINT_PAGES
    async with db.engine.connect() as conn:
        await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    before = path.stat().st_size
    # ~100 pages: far under the commit's own threshold, so only the background copies them.
    async with db.engine.begin() as conn:
        await conn.execute(text("INSERT INTO blobs VALUES (:b)"), [{"b": bytes(4000)} for _ in range(100)])
    assert path.stat().st_size == before  # still all in the WAL
    await db.start()
    try:
        await _wait_for(lambda: path.stat().st_size > before + 300_000)
    finally:
        await db.close()


async def test_an_idle_hub_does_not_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbmod, "CHECKPOINT_S", 0.02)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    seen: list[str] = []
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    await db.start()
    try:
        await _wait_for(lambda: any("wal_checkpoint" in s for s in seen))  # the CREATE's pages
        n = len(seen)
        for _ in range(10):
            await asyncio.sleep(0.02)  # ten periods with nothing written
        assert len(seen) == n
    finally:
        await db.close()
