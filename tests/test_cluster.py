"""Several hubs on one PostgreSQL: one handling per event, one send per reply."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fakechan import FakeChannel
from harness import FakeServer, make_settings, pg_database, running_hub
from test_spine_e2e import post_event

from hub.storage.db import Database
from hub.storage.migrate import HEAD, current_revision, migrate


async def test_two_hubs_share_one_postgresql(tmp_path: Path) -> None:
    platform = FakeServer()
    counter = iter(range(1, 10**6))
    platform.on("POST", "/send", lambda r: {"ok": True, "message_id": str(next(counter))})
    await platform.start()
    try:
        async with pg_database() as url:
            for p in ("a", "b"):
                (tmp_path / p).mkdir()
            settings = [make_settings(tmp_path / name, f'[database]\nurl = "{url}"\n') for name in ("a", "b")]
            chans = [FakeChannel(platform.url), FakeChannel(platform.url)]
            async with (
                running_hub(settings[0], extra_channels=[chans[0]]) as a,
                running_hub(settings[1], extra_channels=[chans[1]]) as b,
            ):
                chans[0].bind(a.hub.dispatcher)
                chans[1].bind(b.hub.dispatcher)
                # Every event reaches both hubs, as a platform retry through a balancer may.
                events = [{"id": f"e{i}", "chat": f"c{i % 7}", "text": "/help"} for i in range(60)]
                results = await asyncio.gather(*(post_event(h.url, ev) for ev in events for h in (a, b)))
                assert all(status == 200 for status, _ in results)
                assert sum(body["new"] for _, body in results) == 60
                await platform.wait_for(lambda: len(platform.calls("/send")) >= 60, timeout=30)
                await asyncio.sleep(1.0)
                quotes = [c.json["quote"] for c in platform.calls("/send")]
                assert sorted(quotes) == sorted(ev["id"] for ev in events)
                assert await a.hub.outbox_repo.backlog() == 0
                # Per chat, the platform got the replies in the order they were queued, though
                # both hubs were sending (its message ids count up in order of arrival).
                rows = await a.hub.outbox_repo.all_rows()
                for chat in {r["target"] for r in rows}:
                    arrived = [int(r["sent_ids"][0]) for r in rows if r["target"] == chat]
                    assert arrived == sorted(arrived), chat
                assert await a.hub.inbox.backlog() == 0
    finally:
        await platform.stop()


async def test_processes_starting_together_migrate_once() -> None:
    async with pg_database() as url:
        dbs = [Database(url) for _ in range(3)]
        try:
            applied = await asyncio.gather(*(migrate(db) for db in dbs))
            assert sorted(applied) == [False, False, True]
            assert {await current_revision(db) for db in dbs} == {HEAD}
        finally:
            for db in dbs:
                await db.close()
