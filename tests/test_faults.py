"""The database refuses every write for 5 s in the middle of 200 events and their 200 replies.

Afterwards every event is handled (marked done once, answered once), every reply is sent once
and in order per chat, and every background task (dispatcher lanes and loops, the outbox
worker, the jobs poller, housekeeping) is still alive.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_providers import FakeHunyuan
from fakechan import SECRET, FakeChannel
from harness import FakeServer, eventually, make_settings, running_hub
from jobs_helpers import providers_toml
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from hub.app import Hub
from hub.routing.context import Context
from hub.storage.models import inbox

EVENTS = 200
CHATS = 10
OUTAGE_S = 5.0


class WriteRefusal:
    """Every INSERT, UPDATE or DELETE fails while `on`, as a full disk or a locked file would."""

    def __init__(self) -> None:
        self.on = False
        self.refused = 0

    def __call__(self, _conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if self.on and statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.refused += 1
            raise OperationalError(statement, params, Exception("database or disk is full"))


@pytest.fixture
async def platform() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    counter = iter(range(1, 10**6))
    fake.on("POST", "/send", lambda r: {"ok": True, "message_id": str(next(counter))})
    await fake.start()
    yield fake
    await fake.stop()


async def post_until_stored(url: str, body: dict[str, Any]) -> None:
    """Post like a platform does: again after any answer that is not 200."""
    deadline = time.monotonic() + 60
    while True:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/webhooks/fake", json=body, headers={"X-Fake-Secret": SECRET}) as resp:
                await resp.read()
                if resp.status == 200:
                    return
        assert time.monotonic() < deadline, f"{body['id']} never stored"
        await asyncio.sleep(0.2)


def background_alive(hub: Hub) -> None:
    tasks = [*hub.dispatcher._tasks, *hub.background]
    tasks += [t for t in (hub.outbox._task, hub.outbox._renew_task) if t is not None]
    assert len(tasks) >= 5
    assert [t.get_name() for t in tasks if t.done()] == []
    assert hub.jobs._scheduler is not None and hub.jobs._scheduler.running


@pytest.mark.slow
async def test_a_write_outage_loses_nothing_and_kills_nothing(tmp_path: Path, platform: FakeServer) -> None:
    video = FakeHunyuan(queued_s=0.0, running_s=0.0)
    await video.start()
    try:
        settings = make_settings(tmp_path, providers_toml(hunyuan=video.url, poll_s=0.05))
        channel = FakeChannel(platform.url)
        async with running_hub(settings, extra_channels=[channel], lease_s=3.0, recovery_interval_s=0.5) as h:
            channel.bind(h.hub.dispatcher)
            hub = h.hub
            handled: Counter[str] = Counter()

            async def echo(ctx: Context) -> None:
                handled[ctx.event.id] += 1
                await ctx.reply(f"echo {ctx.args}")

            hub.router.register("echo", echo, description="say it back")
            refusal = WriteRefusal()
            sa_event.listen(hub.db.engine.sync_engine, "before_cursor_execute", refusal)
            posted = 0
            outage_started = asyncio.Event()

            async def one_chat(c: int) -> None:
                nonlocal posted
                # One chat's events in order, as its platform delivers them.
                for i in range(c, EVENTS, CHATS):
                    body = {"id": f"f{i}", "chat": f"c{c}", "user": f"u{c}", "text": f"/echo {i}"}
                    await post_until_stored(h.url, body)
                    posted += 1
                    if posted == EVENTS // 4:
                        outage_started.set()
                    await asyncio.sleep(0.02)

            async def outage() -> None:
                await outage_started.wait()
                refusal.on = True
                await asyncio.sleep(OUTAGE_S)  # the fault itself lasts this long
                refusal.on = False

            await asyncio.gather(outage(), *(one_chat(c) for c in range(CHATS)))
            assert refusal.refused > 0

            def replies() -> list[Any]:
                return [c for c in platform.calls("/send") if str(c.json["quote"]).startswith("f")]

            await platform.wait_for(lambda: len(replies()) >= EVENTS, timeout=120)

            async def settled() -> bool:
                return await hub.inbox.backlog() == 0 and await hub.outbox_repo.backlog() == 0

            await eventually(settled, timeout=30)
            sends = replies()
            # Once each, and in order within each chat.
            assert sorted(c.json["quote"] for c in sends) == sorted(f"f{i}" for i in range(EVENTS))
            for c in range(CHATS):
                numbers = [int(s.json["text"].split()[1]) for s in sends if s.json["chat"] == f"fake:private:c{c}"]
                assert numbers == list(range(c, EVENTS, CHATS)), f"chat c{c} out of order"
            assert set(handled) == {f"f{i}" for i in range(EVENTS)}
            async with hub.db.engine.connect() as conn:
                done = (
                    await conn.execute(select(func.count()).where(inbox.c.status == "done", inbox.c.channel == "fake"))
                ).scalar()
            assert done == EVENTS
            background_alive(hub)
            # Still working after the outage: a new job is picked up by the poller.
            await post_until_stored(h.url, {"id": "v1", "chat": "cv", "user": "uv", "text": "/video a cat"})

            async def video_made() -> bool:
                return any(c.json["media"] for c in platform.calls("/send"))

            await eventually(video_made, timeout=30)
            background_alive(hub)
    finally:
        await video.stop()
