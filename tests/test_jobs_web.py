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
    assert text_of(await web_chat(hub.url, "c2", "/jobs")).startswith("You have no jobs yet.")

    # Someone else cannot cancel it, nor learn that it exists.
    assert text_of(await web_chat(hub.url, "c2", f"/cancel #{job_id}")) == f"There is no job #{job_id} of yours."
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
        assert text_of(await web_chat(h.url, "n1", "/video a cat")) == "Video generation is not set up on this hub."
        assert text_of(await web_chat(h.url, "n1", "/music a song")) == "Music generation is not set up on this hub."
        assert text_of(await web_chat(h.url, "n1", "/image a cat")) == "Image generation is not set up on this hub."


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
