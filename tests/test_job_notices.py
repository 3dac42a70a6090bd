"""A job's notice and the change of state it tells of are one transaction (issue 11: 16).

Whoever reads a notice (the owner, then `/jobs`) finds the job already in that state; a change
that does not commit queues no notice, and the retry tells once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fake_providers import FakeHunyuan
from jobs_helpers import providers_toml
from sqlalchemy.exc import OperationalError
from test_jobs_poller import Parts, _get, _parts, _status, due_now, job_rows, request, step


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
