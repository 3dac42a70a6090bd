"""QQ's passive-reply rule end to end: what QQ no longer allows (a late job, a sixth reply)
waits in the outbox and goes out once, with the chat's next message, across restarts and
across two processes on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from fake_providers import FakeHunyuan
from fake_qq import USER, FakeQQ, post
from harness import RunningHub, eventually, running_hub
from jobs_helpers import job_ref, providers_toml
from sqlalchemy import update
from test_qq import PUBLIC, qq_settings

from hub.storage.db import utcnow
from hub.storage.models import reply_slots


@pytest.fixture
async def qq() -> AsyncIterator[FakeQQ]:
    fake = FakeQQ()
    await fake.start()
    yield fake
    await fake.stop()


# --- long jobs: a result after the window waits for the user's next message ------------------


@pytest.fixture
async def hunyuan() -> AsyncIterator[FakeHunyuan]:
    # Running until the test says it is done: the window closes first, whatever the machine's pace.
    fake = FakeHunyuan(queued_s=0.05, running_s=3600)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def job_hub(tmp_path: Path, qq: FakeQQ, hunyuan: FakeHunyuan) -> AsyncIterator[RunningHub]:
    settings = qq_settings(tmp_path, qq, f'[http]\npublic_url = "{PUBLIC}"\n' + providers_toml(hunyuan=hunyuan.url))
    async with running_hub(settings) as running:
        qq.resolve[PUBLIC] = running.url
        yield running


async def close_windows(hub: RunningHub, qq: FakeQQ) -> None:
    """Time passes: every message delivered so far is past its reply window, at QQ and in the hub."""
    for msg_id, (chat, at) in list(qq.delivered.items()):
        qq.delivered[msg_id] = (chat, at - 7200)
    async with hub.hub.db.engine.begin() as conn:
        await conn.execute(update(reply_slots).values(closes_at=utcnow() - timedelta(seconds=1)))


async def outbox_status(hub: RunningHub, key: str) -> str | None:
    return (await hub.hub.outbox_repo.statuses([key])).get(key)


async def test_a_video_after_the_window_goes_with_the_next_message_once(
    job_hub: RunningHub, qq: FakeQQ, hunyuan: FakeHunyuan
) -> None:
    chat = f"private:{USER}"
    await post(job_hub.url, qq.c2c("/video a piglet singing"))
    await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 1)
    first = qq.replies(chat)[0].content
    assert "queued as #" in first and "when it is ready, send me any message to receive it" in first
    job_id = job_ref(first)
    await close_windows(job_hub, qq)
    hunyuan.running_s = 0  # the video is done, long after the window
    key = f"job:{job_id}:result"
    await eventually(lambda: outbox_status(job_hub, key), timeout=20)
    await eventually(lambda: _is(outbox_status(job_hub, key), "waiting"), timeout=20)
    assert len(qq.replies(chat)) == 1 and not qq.refused  # nothing tried on an expired msg_id

    nxt = qq.c2c("thanks")
    await post(job_hub.url, nxt)
    await qq.api.wait_for(lambda: any(s.body.get("msg_type") == 7 for s in qq.replies(chat)), timeout=20)
    await eventually(lambda: _is(outbox_status(job_hub, key), "sent"))
    videos = [s for s in qq.replies(chat) if s.body.get("msg_type") == 7]
    assert len(videos) == 1
    assert videos[0].body["msg_id"] == nxt["d"]["id"]
    assert qq.files[videos[0].body["media"]["file_info"]].startswith(f"{PUBLIC}/media/")
    upload = qq.api.calls(f"/v2/users/{USER}/files")[0].json
    assert upload["file_type"] == 2 and upload["srv_send_msg"] is False
    # Later messages get their own answers, never the video again.
    await post(job_hub.url, qq.c2c("hello again"))
    await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 4)
    await asyncio.sleep(0.3)
    assert len([s for s in qq.replies(chat) if s.body.get("msg_type") == 7]) == 1
    seqs = [(s.body["msg_id"], s.body["msg_seq"]) for s in qq.replies(chat)]
    assert len(set(seqs)) == len(seqs) and not qq.refused


async def _is(value: object, expected: str) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return value == expected
