"""A job's notice and the change of state it tells of are one transaction (issue 11: 16).

Whoever reads a notice (the owner, then `/jobs`) finds the job already in that state; a change
that does not commit queues no notice, and the retry tells once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fake_providers import FakeHunyuan, FakeImages
from jobs_helpers import providers_toml
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from test_jobs_poller import Parts, _get, _parts, _status, due_now, job_rows, request, step

from hub.events import ChatRef
from hub.i18n import N_, texts
from hub.jobs.results import Reason
from hub.jobs.service import JobRequest
from hub.storage.chats import ChatRepo
from hub.storage.db import utcnow
from hub.storage.models import jobs as jobs_table


@pytest.fixture
async def hunyuan() -> AsyncIterator[FakeHunyuan]:
    fake = FakeHunyuan(queued_s=0.0, running_s=0.0)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def parts(tmp_path: Path, hunyuan: FakeHunyuan) -> AsyncIterator[Parts]:
    p = await _parts(tmp_path, providers_toml(hunyuan=hunyuan.url, poll_s=0.01))
    yield p
    await p.service.stop()
    await p.db.close()


def refuse_once(parts: Parts, when: Callable[[dict[str, Any]], bool]) -> list[str]:
    """Make the first job change matching `when` fail as a database refusing the write would."""
    repo = parts.service.repo
    original = repo.change
    refused: list[str] = []

    async def change(job_id: str, expect: Any, **kw: Any) -> bool:
        if not refused and when(kw):
            refused.append(job_id)
            raise OperationalError("UPDATE jobs", {}, Exception("disk I/O error"))
        return await original(job_id, expect, **kw)

    repo.change = change  # type: ignore[method-assign]
    return refused


async def test_a_failure_notice_is_queued_only_with_the_failed_state(parts: Parts, hunyuan: FakeHunyuan) -> None:
    svc = parts.service
    refused = refuse_once(parts, lambda kw: kw.get("state") == "failed")
    hunyuan.server.queue("POST", "/v1/api/video/submit", _status(400, "prompt refused"))
    hunyuan.server.queue("POST", "/v1/api/video/submit", _status(400, "prompt refused"))
    job = (await svc.request(request("a storm"))).job
    await step(svc)
    assert refused == [job.id]
    # The state did not change, so nothing tells the owner it did.
    assert (await _get(svc, job.id)).state == "queued"
    assert await job_rows(parts) == []
    await svc.repo.release([job.id])
    await step(svc)
    assert (await _get(svc, job.id)).state == "failed"
    (notice,) = await job_rows(parts)
    assert notice["idempotency_key"] == f"job:{job.id}:failed"


async def test_the_started_notice_comes_with_the_running_state(tmp_path: Path) -> None:
    fake = FakeHunyuan(queued_s=0.0, running_s=60.0)  # still running at the first poll
    await fake.start()
    try:
        slow = await _parts(tmp_path, providers_toml(hunyuan=fake.url, poll_s=0.01))
        svc = slow.service
        try:
            refused = refuse_once(slow, lambda kw: kw.get("state") == "running")
            job = (await svc.request(request("waves"))).job
            await step(svc)  # submitted
            await due_now(slow.db, job.id)
            await step(svc)  # running, but the change is refused
            assert refused == [job.id]
            assert (await _get(svc, job.id)).state == "submitted"
            assert await job_rows(slow) == []
            await svc.repo.release([job.id])
            await due_now(slow.db, job.id)
            await step(svc)
            assert (await _get(svc, job.id)).state == "running"
            assert [r["idempotency_key"] for r in await job_rows(slow)] == [f"job:{job.id}:progress"]
        finally:
            await svc.stop()
            await slow.db.close()
    finally:
        await fake.stop()


async def test_the_result_comes_with_the_delivered_state(parts: Parts, hunyuan: FakeHunyuan) -> None:
    svc = parts.service
    refused = refuse_once(parts, lambda kw: kw.get("state") == "delivered")
    job = (await svc.request(request("a cat"))).job
    await step(svc)
    await due_now(parts.db, job.id)
    await step(svc)
    assert refused == [job.id]
    assert (await _get(svc, job.id)).state == "succeeded"
    assert await job_rows(parts) == []
    await svc.repo.release([job.id])
    await due_now(parts.db, job.id)
    await step(svc)
    assert (await _get(svc, job.id)).state == "delivered"
    assert [r["idempotency_key"] for r in await job_rows(parts)] == [f"job:{job.id}:result"]


# --- in the chat's language --------------------------------------------------------------------

SUBMIT = "/v1/api/video/submit"


def asked(chat: ChatRef, prompt: str, **context: Any) -> JobRequest:
    return JobRequest(owner=f"{chat.channel}:u1", chat=chat, skill="video", prompt=prompt, quote="m1", context=context)


async def notices(parts: Parts) -> dict[str, str]:
    return {r["idempotency_key"]: r["message"][0]["text"] for r in await job_rows(parts)}


async def test_a_failure_is_told_in_each_chats_language(parts: Parts, hunyuan: FakeHunyuan) -> None:
    svc = parts.service
    for _ in range(4):
        hunyuan.server.queue("POST", SUBMIT, _status(400, "prompt refused"))
    # QQ is a Chinese platform; the web chat follows the browser's language; /lang wins over both.
    qq = (await svc.request(asked(ChatRef("qq", "private", "u1"), "一场风暴"))).job
    web = (await svc.request(asked(ChatRef("web", "private", "s1"), "一场风暴", lang="zh"))).job
    en = (await svc.request(request("a storm"))).job
    await ChatRepo(parts.db).update("qq:private:u2", language="en")
    chose_en = (await svc.request(asked(ChatRef("qq", "private", "u2"), "a storm"))).job
    await step(svc)
    told = await notices(parts)
    for job in (qq, web):
        assert told[f"job:{job.id}:failed"].startswith(f"抱歉，你的视频 #{job.id} 生成失败：hunyuan submit: HTTP 400")
        assert "prompt refused" in told[f"job:{job.id}:failed"]
    for job in (en, chose_en):
        assert told[f"job:{job.id}:failed"].startswith(f"Sorry, your video #{job.id} failed: hunyuan submit: HTTP 400")


async def test_a_timeout_is_told_with_its_limit_in_each_language(parts: Parts) -> None:
    svc = parts.service
    zh = (await svc.request(asked(ChatRef("onebot", "group", "1/2"), "慢慢来"))).job
    en = (await svc.request(request("slowly"))).job
    now = utcnow()
    async with parts.db.engine.begin() as conn:
        await conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_([zh.id, en.id]))
            .values(created_at=now - timedelta(minutes=10), deadline_at=now - timedelta(minutes=5))
        )
    await step(svc)
    told = await notices(parts)
    assert told[f"job:{zh.id}:timed_out"] == f"抱歉，你的视频 #{zh.id} 超时了：5 分钟内没有结果。"
    assert told[f"job:{en.id}:timed_out"] == f"Sorry, your video #{en.id} timed out: no result within 5 minutes."
    # What the operator reads stays English.
    assert (await _get(svc, zh.id)).error == "no result within 5 minutes"


async def test_the_started_notice_is_in_the_chats_language(tmp_path: Path) -> None:
    fake = FakeHunyuan(queued_s=0.0, running_s=60.0)
    await fake.start()
    slow = await _parts(tmp_path, providers_toml(hunyuan=fake.url, poll_s=0.01))
    try:
        svc = slow.service
        zh = (await svc.request(asked(ChatRef("wechat", "private", "o1"), "海浪"))).job
        en = (await svc.request(asked(ChatRef("telegram", "private", "7"), "waves", lang="en-US"))).job
        await step(svc)  # submitted
        await due_now(slow.db, zh.id)
        await due_now(slow.db, en.id)
        await step(svc)  # running
        told = await notices(slow)
        assert told[f"job:{zh.id}:progress"] == f"#{zh.id} 已开始：正在为你生成视频。"
        assert told[f"job:{en.id}:progress"] == f"#{en.id} has started: your video is being made now."
    finally:
        await slow.service.stop()
        await slow.db.close()
        await fake.stop()


async def test_an_image_refusal_answered_again_after_a_crash_is_said_in_the_chats_language(tmp_path: Path) -> None:
    fake = FakeImages()
    await fake.start()
    p = await _parts(tmp_path, providers_toml(image=fake.url))
    try:
        svc = p.service
        svc._delivery.max_download_bytes = 10  # the image is larger than that
        req = JobRequest(
            owner="qq:u1", chat=ChatRef("qq", "private", "u1"), skill="image", prompt="风筝", origin="qq:i1"
        )
        first = await svc.request_image(req)
        assert first.how == "failed" and first.error is not None
        # Handled again (the event came back after a crash): the reason was kept in neutral form.
        again = await svc.request_image(req)
        assert again.how == "failed" and again.error == first.error
        assert again.error.say(texts("zh")) == "图片超过了 0 MB"
        assert again.error.say(texts("en")) == "the image is larger than 0 MB"
        assert (await _get(svc, first.job.id)).error == "the image is larger than 0 MB"
    finally:
        await p.service.stop()
        await p.db.close()
        await fake.stop()


def test_a_reason_survives_its_json_and_provider_words_stay_as_they_are() -> None:
    limit = Reason(N_("no result within %(limit)s"), limit_s=180)
    assert Reason.from_json(json.loads(json.dumps(limit.to_json()))) == limit
    assert limit.say(texts("zh")) == "3 分钟内没有结果" and limit.say(texts("en")) == "no result within 3 minutes"
    words = Reason.words("prompt refused")
    assert words.say(texts("zh")) == words.say(texts("en")) == "prompt refused"
    assert Reason.from_json("not a reason") is None
