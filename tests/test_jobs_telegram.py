"""`/video@<botname> a cat` in a Telegram group: the job id at once, the video uploaded to the group."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_providers import FakeHunyuan, video_bytes
from fake_telegram import BOT_USERNAME, FakeTelegram, command_entity, message_update, post_update, telegram_toml
from harness import eventually, make_settings, running_hub
from jobs_helpers import job_ref, providers_toml

GROUP = -1001234567890


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hunyuan() -> AsyncIterator[FakeHunyuan]:
    fake = FakeHunyuan(queued_s=0.1, running_s=0.2)
    await fake.start()
    yield fake
    await fake.stop()


async def test_a_video_asked_in_a_group_is_uploaded_to_that_group(
    tmp_path: Path, tg: FakeTelegram, hunyuan: FakeHunyuan
) -> None:
    toml = telegram_toml(tg.url, public_url="https://hub.example.org") + providers_toml(hunyuan=hunyuan.url)
    async with running_hub(make_settings(tmp_path, toml)) as h:
        text = f"/video@{BOT_USERNAME} a cat"
        update = message_update(text, chat_id=GROUP, entities=command_entity(text), message_id=777)
        assert await post_update(h.url, update) == 200

        await tg.wait_for(lambda: len(tg.delivered()) >= 1)
        answer = tg.delivered()[0]
        job_id = job_ref(answer.params["text"])
        assert answer.params["text"] == f"queued as #{job_id} — I'll post it here when it's ready, usually 1–3 minutes"
        assert answer.params["chat_id"] == str(GROUP)
        assert answer.params["reply_parameters"]["message_id"] == 777

        await tg.wait_for(lambda: len(tg.delivered("sendVideo")) == 1, timeout=15)
        (video,) = tg.delivered("sendVideo")
        assert video.params["chat_id"] == str(GROUP)
        assert video.params["caption"] == "a cat"
        assert video.params["reply_parameters"]["message_id"] == 777
        upload = video.file("video")
        assert upload is not None and upload.data == video_bytes(next(iter(hunyuan.jobs)))

        async def delivered() -> bool:
            job = await h.hub.jobs.get(job_id)
            return job is not None and job.state == "delivered"

        await eventually(delivered)  # marked just after the video was queued
        job = await h.hub.jobs.get(job_id)
        assert job is not None
        assert str(job.chat) == f"telegram:group:{GROUP}" and job.quote == str(update["update_id"])
    (submit,) = hunyuan.submits()
    assert submit.json == {"model": "hy-video-1.5", "prompt": "a cat"}
