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
from fake_qq import GROUP, USER, FakeQQ, Sent, post
from harness import RunningHub, eventually, pg_database, running_hub
from jobs_helpers import job_ref, providers_toml
from sqlalchemy import insert, update
from test_qq import CHAT, PUBLIC, qq_settings

from hub.channels.qq.channel import QQChannel
from hub.events import Message
from hub.storage.db import utcnow
from hub.storage.models import outbox, reply_slots
from hub.storage.outbox import NewMessage


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
    public = f'[http]\npublic_url = "{PUBLIC}"\n[web]\ntoken = "web-secret-1"\n'
    settings = qq_settings(tmp_path, qq, public + providers_toml(hunyuan=hunyuan.url))
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
    # QQ is a Chinese platform: the answer is Chinese, and says how to get a late result.
    assert first.startswith("已排队，任务编号 #") and "如果到时还没收到，给我发任意一条消息即可领取。" in first
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


def chat_replies(qq: FakeQQ, chat: str, msg_type: int | None = None) -> list[Sent]:
    return [s for s in qq.replies(chat) if msg_type is None or s.body.get("msg_type") == msg_type]


async def test_a_job_asked_in_a_group_waits_and_jobs_says_so(
    job_hub: RunningHub, qq: FakeQQ, hunyuan: FakeHunyuan
) -> None:
    group = f"group:{GROUP}"
    # The same person in the group and in private (one openid here, so /jobs lists the job).
    await post(job_hub.url, qq.group_at(" /video a cat", member=USER))
    await qq.api.wait_for(lambda: len(chat_replies(qq, group)) >= 1)
    job_id = job_ref(chat_replies(qq, group)[0].content)
    await close_windows(job_hub, qq)
    hunyuan.running_s = 0
    key = f"job:{job_id}:result"
    await eventually(lambda: _is(outbox_status(job_hub, key), "waiting"), timeout=20)

    await post(job_hub.url, qq.c2c("/jobs"))
    await qq.api.wait_for(lambda: len(chat_replies(qq, f"private:{USER}")) >= 1)
    listing = chat_replies(qq, f"private:{USER}")[0].content
    assert f"#{job_id} 视频 · 等你领取（给我发任意一条消息即可收到） · a cat（" in listing
    assert await outbox_status(job_hub, key) == "waiting"  # a private message is not the group's

    nxt = qq.group_at(" hi", member=USER)
    await post(job_hub.url, nxt)
    await qq.api.wait_for(lambda: len(chat_replies(qq, group, 7)) >= 1, timeout=20)
    await eventually(lambda: _is(outbox_status(job_hub, key), "sent"))
    (video,) = chat_replies(qq, group, 7)
    assert video.body["msg_id"] == nxt["d"]["id"] and not qq.refused


async def test_a_sixth_reply_waits_for_the_next_message(tmp_path: Path, qq: FakeQQ) -> None:
    chat = f"private:{USER}"
    async with running_hub(qq_settings(tmp_path, qq)) as running:
        first = qq.c2c("hi")
        await post(running.url, first)
        await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 1)  # the first of its five
        # Five parts for the same message: four fit in what QQ still allows, one waits.
        text = "\n\n".join(letter * 3000 for letter in "ABCDE")
        item = await running.hub.outbox.put(
            NewMessage(target=CHAT, message=Message.of(text), context={"msg_id": first["d"]["id"]})
        )
        await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 5)
        await eventually(lambda: _row_status(running, item, "waiting"))
        assert [s.body["msg_seq"] for s in qq.replies(chat)] == [1, 2, 3, 4, 5]
        assert [s.content[0] for s in qq.replies(chat)[1:]] == ["A", "B", "C", "D"]
        second = qq.c2c("more?")
        await post(running.url, second)
        await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 7)
        await eventually(lambda: _row_status(running, item, "sent"))
        rest = [s for s in qq.replies(chat) if s.content.startswith("E")]
        assert len(rest) == 1 and rest[0].body["msg_id"] == second["d"]["id"]
        assert not qq.refused


async def test_waiting_survives_a_restart_and_goes_out_once(tmp_path: Path, qq: FakeQQ) -> None:
    chat = f"private:{USER}"
    settings = qq_settings(tmp_path, qq)
    async with running_hub(settings) as first:
        # Nothing to answer (the delivery API, a broadcast): it waits for the user.
        item = await first.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("news for you")))
        await eventually(lambda: _row_status(first, item, "waiting"))
    assert qq.sent == []
    async with running_hub(settings) as second:
        assert await _row_status(second, item, "waiting")
        hello = qq.c2c("hello")
        await post(second.url, hello)
        await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 2)
        await eventually(lambda: _row_status(second, item, "sent"))
        news = [s for s in qq.replies(chat) if s.content == "news for you"]
        assert len(news) == 1 and news[0].body["msg_id"] == hello["d"]["id"]


async def test_two_hubs_on_postgresql_send_a_waiting_message_once(tmp_path: Path, qq: FakeQQ) -> None:
    chat = f"private:{USER}"
    async with pg_database() as url:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        settings = [qq_settings(tmp_path / name, qq, f'[database]\nurl = "{url}"\n') for name in ("a", "b")]
        async with running_hub(settings[0]) as a, running_hub(settings[1]) as b:
            items = [await a.hub.outbox.put(NewMessage(target=CHAT, message=Message.of(f"news {n}"))) for n in range(3)]
            for item in items:
                await eventually(lambda item=item: _row_status(a, item, "waiting"))
            # The user writes twice at once; each message reaches another hub.
            msgs = [qq.c2c("one"), qq.c2c("two")]
            await asyncio.gather(post(a.url, msgs[0]), post(b.url, msgs[1]))
            for item in items:
                await eventually(lambda item=item: _row_status(a, item, "sent"), timeout=20)
            await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 5)
            await asyncio.sleep(0.5)
            news = sorted(s.content for s in qq.replies(chat) if s.content.startswith("news"))
            assert news == ["news 0", "news 1", "news 2"]
            assert not qq.refused


async def _row_status(hub: RunningHub, item_id: int, expected: str) -> bool:
    rows = await hub.hub.outbox_repo.all_rows()
    return any(r["id"] == item_id and r["status"] == expected for r in rows)


async def test_the_chat_is_released_again_shortly_after_its_message(tmp_path: Path, qq: FakeQQ) -> None:
    # A reply parked a moment after the release (it was being sent as the message came in)
    # still goes with this message: the chat is released once more a little later.
    async with running_hub(qq_settings(tmp_path, qq)) as running:
        channel = running.hub.channels["qq"]
        assert isinstance(channel, QQChannel)
        channel.release_again_s = 0.2
        hello = qq.c2c("hello")
        await post(running.url, hello)
        await qq.api.wait_for(lambda: len(qq.sent) >= 1)
        async with running.hub.db.engine.begin() as conn:
            await conn.execute(
                insert(outbox).values(
                    target=str(CHAT),
                    message=[{"type": "text", "text": "parked late"}],
                    context={},
                    status="waiting",
                    next_attempt_at=utcnow(),
                    created_at=utcnow(),
                )
            )
        await qq.api.wait_for(lambda: any(s.content == "parked late" for s in qq.sent))
        late = next(s for s in qq.sent if s.content == "parked late")
        assert late.body["msg_id"] == hello["d"]["id"]


async def test_when_qq_says_expired_the_reply_waits_instead_of_failing(tmp_path: Path, qq: FakeQQ) -> None:
    chat = f"private:{USER}"
    async with running_hub(qq_settings(tmp_path, qq)) as running:
        first = qq.c2c("hi")
        await post(running.url, first)
        await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 1)
        # QQ's clock runs ahead of the hub's: to QQ the message is already too old to answer.
        for msg_id, (where, at) in list(qq.delivered.items()):
            qq.delivered[msg_id] = (where, at - 7200)
        item = await running.hub.outbox.put(
            NewMessage(target=CHAT, message=Message.of("late answer"), context={"msg_id": first["d"]["id"]})
        )
        await eventually(lambda: _row_status(running, item, "waiting"))
        assert [code for code, _ in qq.refused] == [40034024]  # tried once, never again on that msg_id
        second = qq.c2c("and now?")
        await post(running.url, second)
        await eventually(lambda: _row_status(running, item, "sent"))
        late = [s for s in qq.replies(chat) if s.content == "late answer"]
        assert len(late) == 1 and late[0].body["msg_id"] == second["d"]["id"]
