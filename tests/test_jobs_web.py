"""Jobs end to end through the web chat: /video, /music, /image, /jobs, /cancel, over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fake_providers import PNG_1X1, FakeHunyuan, FakeImages, FakeMusic, audio_bytes, video_bytes
from harness import RunningHub, eventually, make_settings, running_hub, text_of, web_chat
from jobs_helpers import EventStream, has_media, has_text, job_ref, providers_toml

from hub.events import ChatRef
from hub.jobs.service import JobRequest
from hub.storage.jobs import DELIVERED


@pytest.fixture
async def hunyuan() -> AsyncIterator[FakeHunyuan]:
    fake = FakeHunyuan(queued_s=0.15, running_s=0.3)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def music() -> AsyncIterator[FakeMusic]:
    fake = FakeMusic(queued_s=0.1, running_s=0.2)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def images() -> AsyncIterator[FakeImages]:
    fake = FakeImages()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(tmp_path: Path, hunyuan: FakeHunyuan, music: FakeMusic, images: FakeImages) -> AsyncIterator[RunningHub]:
    toml = providers_toml(hunyuan=hunyuan.url, music=music.url, image=images.url, job_after_s=0.5, timeout_s=3)
    async with running_hub(make_settings(tmp_path, toml)) as h:
        yield h


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_video_answers_at_once_and_arrives_on_the_events_stream(hub: RunningHub, hunyuan: FakeHunyuan) -> None:
    async with EventStream(hub.url, "s1") as events:
        started = time.monotonic()
        answer = text_of(await web_chat(hub.url, "s1", "/video a cat"))
        assert time.monotonic() - started < 2.0
        job_id = job_ref(answer)
        assert answer == f"queued as #{job_id} — I'll post it here when it's ready, usually 1–3 minutes"

        note = await events.until(has_text("has started"))
        assert note == [{"content": f"#{job_id} has started: your video is being made now."}]
        video = await events.until(has_media("video"))

    # DESIGN.md's format: the media item, then the caption as content, then [DONE].
    assert len(video) == 2
    assert video[0]["media"]["type"] == "video"
    assert video[0]["media"]["url"].startswith("/media/")
    assert video[1] == {"content": "a cat"}
    (submit,) = hunyuan.submits()
    assert submit.json == {"model": "hy-video-1.5", "prompt": "a cat"}
    provider_job = next(iter(hunyuan.jobs))
    assert await fetch(hub.url + video[0]["media"]["url"]) == video_bytes(provider_job)

    await eventually(lambda: _state(hub, job_id, DELIVERED))  # marked just after it was queued
    job = await hub.hub.jobs.get(f"#{job_id}")
    assert job is not None
    assert job.provider_job_id == provider_job and job.owner == "web:s1" and str(job.chat) == "web:private:s1"
    rows = [r for r in await hub.hub.outbox_repo.all_rows() if r["origin"] == "job"]
    assert sorted(r["idempotency_key"] for r in rows) == [f"job:{job_id}:progress", f"job:{job_id}:result"]


async def test_the_same_request_in_flight_answers_with_its_status(hub: RunningHub, hunyuan: FakeHunyuan) -> None:
    first = job_ref(text_of(await web_chat(hub.url, "s2", "/video a dancing piglet")))
    again = text_of(await web_chat(hub.url, "s2", "/video a dancing piglet"))
    assert job_ref(again) == first
    assert again.startswith(f"You already asked for that: #{first} is ")
    assert len(hunyuan.submits()) <= 1
    # Another person asking the same is another job.
    other = job_ref(text_of(await web_chat(hub.url, "s3", "/video a dancing piglet")))
    assert other != first


async def test_creating_from_the_same_event_twice_finds_the_first_job(hub: RunningHub) -> None:
    """The dispatcher may handle an event again after a crash: the origin finds the job."""
    req = JobRequest(owner="web:s9", chat=ChatRef("web", "private", "s9"), skill="video", prompt="x", origin="web:ev1")
    first = await hub.hub.jobs.request(req)
    second = await hub.hub.jobs.request(req)
    assert first.how == "created" and second.how == "existing"
    assert first.job.id == second.job.id
    assert len(await hub.hub.jobs.list(owner="web:s9")) == 1


async def test_a_failed_video_is_told_with_the_providers_message(hub: RunningHub) -> None:
    async with EventStream(hub.url, "f1") as events:
        job_id = job_ref(text_of(await web_chat(hub.url, "f1", "/video [fail] something")))
        told = await events.until(has_text("failed"))
    assert told == [{"content": f"Sorry, your video #{job_id} failed: prompt refused"}]
    job = await hub.hub.jobs.get(job_id)
    assert job is not None and job.state == "failed" and job.error == "prompt refused"


async def test_a_provider_that_never_finishes_is_timed_out(hub: RunningHub) -> None:
    async with EventStream(hub.url, "t1") as events:
        job_id = job_ref(text_of(await web_chat(hub.url, "t1", "/video [never] a slow one")))
        told = await events.until(has_text("timed out"), timeout=15)
    assert told[0]["content"].startswith(f"Sorry, your video #{job_id} timed out: no result within 3 s")
    job = await hub.hub.jobs.get(job_id)
    assert job is not None and job.state == "timed_out"


async def test_music_arrives_as_audio(hub: RunningHub, music: FakeMusic) -> None:
    async with EventStream(hub.url, "m1") as events:
        answer = text_of(await web_chat(hub.url, "m1", "/music rain on a tin roof"))
        assert "queued as #" in answer and "usually about a minute" in answer
        audio = await events.until(has_media("audio"))
    assert audio[1] == {"content": "rain on a tin roof"}
    (generate,) = music.server.calls("/api/generate")
    assert generate.json == {
        "prompt": "rain on a tin roof",
        "make_instrumental": False,
        "wait_audio": False,
        "model": "chirp-v4",
    }
    first_clip = sorted(music.jobs)[0]
    assert await fetch(hub.url + audio[0]["media"]["url"]) in {audio_bytes(c) for c in music.jobs}
    assert any(first_clip in c.query.get("ids", "") for c in music.server.calls("/api/get"))


async def test_a_fast_image_comes_back_in_the_same_exchange(hub: RunningHub, images: FakeImages) -> None:
    items = await web_chat(hub.url, "i1", "/image a red apple")
    assert items[0]["media"]["type"] == "image"
    assert items[1] == {"content": "a red apple"}
    assert items[-1] == "[DONE]"
    assert await fetch(hub.url + items[0]["media"]["url"]) == PNG_1X1
    (call,) = images.server.calls("/v1/images/generations")
    assert call.json["prompt"] == "a red apple" and call.json["model"] == "gpt-image-1"
    (job,) = await hub.hub.jobs.list(owner="web:i1")
    assert job.state == DELIVERED


async def test_a_slow_image_becomes_a_job_and_is_delivered_later(hub: RunningHub, images: FakeImages) -> None:
    images.delay_s = 1.2  # past job_after_s = 0.5
    async with EventStream(hub.url, "i2") as events:
        started = time.monotonic()
        answer = text_of(await web_chat(hub.url, "i2", "/image a slow sunset"))
        assert time.monotonic() - started < 1.1
        job_id = job_ref(answer)
        assert answer.startswith(f"This one takes longer: queued as #{job_id}")
        picture = await events.until(has_media("image"))
    assert picture[1] == {"content": "a slow sunset"}
    assert await fetch(hub.url + picture[0]["media"]["url"]) == PNG_1X1
    await eventually(lambda: _state(hub, job_id, DELIVERED))


async def test_a_refused_image_is_told_at_once(hub: RunningHub) -> None:
    answer = text_of(await web_chat(hub.url, "i3", "/image [fail] nope"))
    assert answer == (
        "Sorry, I could not make that image: images: HTTP 400: Your request was rejected by the safety system."
    )


async def test_jobs_lists_mine_and_cancel_stops_one(hub: RunningHub, hunyuan: FakeHunyuan) -> None:
    job_id = job_ref(text_of(await web_chat(hub.url, "c1", "/video [never] forever")))
    listing = text_of(await web_chat(hub.url, "c1", "/jobs"))
    assert listing.startswith("Your recent jobs:\n")
    assert f"#{job_id} video · " in listing and "[never] forever" in listing
    assert "No jobs" not in text_of(await web_chat(hub.url, "c1", "/jobs"))
    assert text_of(await web_chat(hub.url, "c2", "/jobs")) == "You have no jobs yet. Try /video a piglet singing"

    # Someone else cannot cancel it, nor learn that it exists.
    assert text_of(await web_chat(hub.url, "c2", f"/cancel #{job_id}")) == (
        f"There is no job #{job_id} of yours. Send /jobs to see yours."
    )
    assert text_of(await web_chat(hub.url, "c1", f"/cancel {job_id.upper()}")) == f"Cancelled #{job_id}."
    job = await hub.hub.jobs.get(job_id)
    assert job is not None and job.state == "cancelled"
    assert text_of(await web_chat(hub.url, "c1", f"/cancel #{job_id}")) == f"#{job_id} is already cancelled."
    assert text_of(await web_chat(hub.url, "c1", "/cancel")).startswith("Which job?")
    # A cancelled job is not polled any more.
    polls = len(hunyuan.server.calls("/v1/api/video/query"))
    await asyncio.sleep(0.3)  # a negative: give the poller a few ticks to (not) poll it
    assert len(hunyuan.server.calls("/v1/api/video/query")) <= polls + 1


async def test_a_command_whose_provider_is_not_set_up_says_so(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        assert text_of(await web_chat(h.url, "n1", "/video a cat")) == (
            "Video generation is not set up on this hub. Whoever runs it can turn it on: add a "
            "[providers.hunyuan] section (base_url, api_key, key_id) to config/hub.toml and restart the hub."
        )
        assert text_of(await web_chat(h.url, "n1", "/music a song")).startswith(
            "Music generation is not set up on this hub. Whoever runs it can turn it on: "
            "add a [providers.music] section"
        )
        assert text_of(await web_chat(h.url, "n1", "/image a cat")).startswith(
            "Image generation is not set up on this hub. Whoever runs it can turn it on: "
            "add a [providers.image] section"
        )
        # Nothing to suggest: /jobs says how the hub gets one, in English and in Chinese.
        assert text_of(await web_chat(h.url, "n1", "/jobs")) == (
            "You have no jobs yet. This hub cannot make images, videos or music yet: whoever runs it can add a "
            "[providers.image], [providers.hunyuan] or [providers.music] section to config/hub.toml and restart "
            "the hub."
        )
        zh = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}
        assert text_of(await web_chat(h.url, "n2", "/video 一只猫", headers=zh)) == (
            "本机器人尚未配置视频生成。运行本机器人的人可以开启它：在 config/hub.toml 中添加 "
            "[providers.hunyuan] 段（base_url、api_key、key_id），然后重启机器人。"
        )
        assert text_of(await web_chat(h.url, "n2", "/jobs", headers=zh)).startswith(
            "你还没有任务。本机器人还不能生成图片、视频或音乐：运行本机器人的人可以在 config/hub.toml 中添加 "
            "[providers.image]、[providers.hunyuan] 或 [providers.music] 段"
        )


async def test_jobs_suggests_only_a_command_this_chat_can_run(tmp_path: Path, images: FakeImages) -> None:
    async with running_hub(make_settings(tmp_path, providers_toml(image=images.url))) as h:
        # Only images are set up here: /jobs never suggests /video.
        assert text_of(await web_chat(h.url, "j1", "/jobs")) == "You have no jobs yet. Try /image a cat in a spacesuit"
        zh = {"Accept-Language": "zh-CN"}
        assert text_of(await web_chat(h.url, "j2", "/jobs", headers=zh)) == "你还没有任务。试试 /image 一只穿宇航服的猫"
        # Switched off in this chat: nothing it could run, and who can turn it back on.
        await h.hub.chats.set_skill("web:private:j1", "image", False)
        assert text_of(await web_chat(h.url, "j1", "/jobs")) == (
            "You have no jobs yet. Images, videos and music are switched off in this chat: "
            "an admin can turn them back on."
        )
        assert text_of(await web_chat(h.url, "j1", "/image")) == (
            "/image is switched off in this chat. An admin can turn it back on."
        )
        # Asked with no prompt: an example in the chat's language.
        assert (
            text_of(await web_chat(h.url, "j2", "/image", headers=zh))
            == "请告诉我要生成什么，例如：/image 一只穿宇航服的猫"
        )


async def test_a_chinese_web_chat_gets_every_job_text_in_chinese(hub: RunningHub) -> None:
    zh = {"Accept-Language": "zh-CN,zh;q=0.9"}
    async with EventStream(hub.url, "z1") as events:
        answer = text_of(await web_chat(hub.url, "z1", "/video 一只猫", headers=zh))
        job_id = job_ref(answer)
        assert answer == f"已排队，任务编号 #{job_id}，完成后我会发到这里，通常需要 1–3 分钟。"
        # The notices sent later have no request to read the language from: the job's chat has it.
        note = await events.until(has_text("已开始"))
        assert note == [{"content": f"#{job_id} 已开始：正在为你生成视频。"}]
        await events.until(has_media("video"))
        await eventually(lambda: _state(hub, job_id, DELIVERED))

        again = text_of(await web_chat(hub.url, "z1", "/video [never] 很慢", headers=zh))
        slow = job_ref(again)
        same = text_of(await web_chat(hub.url, "z1", "/video [never] 很慢", headers=zh))
        assert same.startswith(f"这个你已经要过了：#{slow} 目前") and "提交）。完成后我会发到这里。" in same
        listing = text_of(await web_chat(hub.url, "z1", "/jobs", headers=zh))
        assert listing.startswith("你最近的任务：\n")
        assert f"#{job_id} 视频 · 已送达 · 一只猫（" in listing and "前）" in listing
        told = await events.until(has_text("超时"), timeout=15)
        assert told == [{"content": f"抱歉，你的视频 #{slow} 超时了：3 秒内没有结果。"}]
        assert (
            text_of(await web_chat(hub.url, "z1", f"/cancel #{slow}", headers=zh)) == f"#{slow} 已经超时了，无需取消。"
        )

        failed = job_ref(text_of(await web_chat(hub.url, "z1", "/video [fail] 不行", headers=zh)))
        told = await events.until(has_text("失败"))
        assert told == [{"content": f"抱歉，你的视频 #{failed} 生成失败：prompt refused"}]
    # The job keeps its error in English, for whoever runs the hub.
    job = await hub.hub.jobs.get(slow)
    assert job is not None and job.error == "no result within 3 seconds"

    never = job_ref(text_of(await web_chat(hub.url, "z1", "/music [never] 雨声", headers=zh)))
    assert text_of(await web_chat(hub.url, "z1", f"/cancel {never}", headers=zh)) == f"已取消 #{never}。"
    assert text_of(await web_chat(hub.url, "z1", "/cancel", headers=zh)).startswith("要取消哪个任务？")
    assert text_of(await web_chat(hub.url, "z1", "/cancel #ffffffff", headers=zh)) == (
        "你没有编号为 #ffffffff 的任务。发送 /jobs 查看你的任务。"
    )


async def test_sdxl_images(tmp_path: Path, images: FakeImages) -> None:
    toml = providers_toml(image=images.url, image_kind="sdxl")
    async with running_hub(make_settings(tmp_path, toml)) as h:
        items = await web_chat(h.url, "x1", "/image a lighthouse")
        assert items[0]["media"]["type"] == "image"
        assert await fetch(h.url + items[0]["media"]["url"]) == PNG_1X1
    (call,) = images.server.calls("/sdapi/v1/txt2img")
    assert call.json["prompt"] == "a lighthouse"
    assert {"negative_prompt", "width", "height", "steps", "seed"} <= set(call.json)


async def _state(hub: RunningHub, job_id: str, state: str) -> bool:
    job = await hub.hub.jobs.get(job_id)
    return job is not None and job.state == state
