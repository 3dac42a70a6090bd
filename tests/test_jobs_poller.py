"""The poller and the jobs table, tick by tick (no scheduler): claims, leases, backoff, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fake_providers import PNG_1X1, FakeHunyuan, FakeImages, video_bytes
from harness import make_settings, pg_database
from jobs_helpers import providers_toml
from sqlalchemy import event, update

from hub.delivery import Outbox
from hub.events import ChatRef, Message
from hub.fetch import policy_from_settings
from hub.i18n.language import ChatLanguages
from hub.jobs.images import ImageJobs
from hub.jobs.results import JobDelivery
from hub.jobs.service import JobRequest, JobService
from hub.metrics import Metrics
from hub.providers.generation import Poll
from hub.settings import Settings
from hub.storage.chats import ChatRepo, ChatSettings
from hub.storage.db import Database, utcnow
from hub.storage.jobs import JOB_ID_RE, Job, JobRepo, NewJob, NextPoll, parse_job_id
from hub.storage.media import MediaStore
from hub.storage.migrate import migrate
from hub.storage.models import jobs as jobs_table
from hub.storage.outbox import NewMessage, OutboxRepo
from hub.wiring import _generation_providers

CHAT = ChatRef("fake", "group", "g1")


def make_service(db: Database, settings: Settings, holder: str) -> JobService:
    """One process's jobs service on `db`, its outbox not sending (the rows are the output)."""
    providers, images = _generation_providers(settings)
    metrics = Metrics()
    media = MediaStore(db, settings.media_dir)
    outbox = Outbox(OutboxRepo(db, holder), media, {}, ChatRepo(db), metrics)
    repo = JobRepo(db, holder, 30)
    languages = ChatLanguages(chats=ChatRepo(db).get, persona_language=_no_persona, bot=settings.bot.language)
    delivery = JobDelivery(repo, outbox, media, fetch_policy=policy_from_settings(settings), languages=languages)
    return JobService(repo, delivery, ImageJobs(repo, delivery, media, images), metrics, providers=providers)


async def _no_persona(chat: ChatSettings) -> str | None:
    return None


@dataclasses.dataclass
class Parts:
    db: Database
    service: JobService
    settings: Settings

    @property
    def outbox(self) -> OutboxRepo:
        # A reader of the same table: the rows the service queued are the output.
        return OutboxRepo(self.db, "reader")

    def other(self, holder: str) -> JobService:
        """A second process's view of the same database."""
        return make_service(self.db, self.settings, holder)


async def _parts(tmp_path: Path, toml: str, url: str | None = None) -> Parts:
    settings = make_settings(tmp_path, toml)
    db = Database(url or settings.database_url)
    await migrate(db)
    await db.start()
    service = make_service(db, settings, "me")
    await service.open()
    return Parts(db, service, settings)


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


def request(prompt: str, origin: str | None = None, owner: str = "fake:u1") -> JobRequest:
    return JobRequest(owner=owner, chat=CHAT, skill="video", prompt=prompt, origin=origin, quote="m1")


async def step(service: JobService) -> int:
    """One tick and the work it started."""
    n = await service.tick()
    await service.drain()
    return n


async def due_now(db: Database, job_id: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(next_poll_at=utcnow()))


async def job_rows(p: Parts) -> list[dict[str, Any]]:
    return [r for r in await p.outbox.all_rows() if r["origin"] == "job"]


def test_job_ids_are_typed_with_or_without_hash() -> None:
    assert parse_job_id("#7F3A") == "7f3a"
    assert parse_job_id(" 7f3a ") == "7f3a"
    assert parse_job_id("deadbeef") == "deadbeef"
    for bad in ("7f3", "7f3a0b1c9", "zzzz", "#", ""):
        assert parse_job_id(bad) is None


async def test_ids_are_short_hex_and_unique(parts: Parts) -> None:
    repo = parts.service.repo
    # Created together, as a busy hub does: one commit serves many, ids still unique.
    made = [
        job
        for job, _ in await asyncio.gather(
            *(repo.create(NewJob("fake:u", CHAT, "video", "hunyuan", f"p{i}", 60, origin=f"o{i}")) for i in range(600))
        )
    ]
    ids = [j.id for j in made]
    assert len(set(ids)) == 600
    assert all(JOB_ID_RE.match(i) for i in ids)
    assert sum(len(i) == 4 for i in ids) > 500  # short while the space is mostly free
    again, created = await repo.create(NewJob("fake:u", CHAT, "video", "hunyuan", "other", 60, origin="o7"))
    assert not created and again.id == made[7].id


async def test_a_job_goes_queued_submitted_succeeded_delivered(parts: Parts, hunyuan: FakeHunyuan) -> None:
    svc = parts.service
    job = (await svc.request(request("a cat", "fake:e1"))).job
    assert job.state == "queued" and job.ref == f"#{job.id}"
    assert await step(svc) == 1
    job = await _get(svc, job.id)
    assert job.state == "submitted" and job.provider_job_id == "1452550001" and job.holder is None
    await due_now(parts.db, job.id)
    assert await step(svc) == 1
    job = await _get(svc, job.id)
    assert job.state == "delivered" and job.finished_at is not None and job.next_poll_at is None
    (row,) = await job_rows(parts)
    assert row["idempotency_key"] == f"job:{job.id}:result" and row["target"] == str(CHAT) and row["quote"] == "m1"
    (seg,) = row["message"]
    assert seg["type"] == "video" and seg["caption"] == "a cat" and seg["mime"] == "video/mp4"
    assert Path(seg["path"]).read_bytes() == video_bytes("1452550001")
    assert await step(svc) == 0  # nothing due any more


async def test_a_transient_error_backs_off_without_changing_state(parts: Parts, hunyuan: FakeHunyuan) -> None:
    svc = parts.service
    job = (await svc.request(request("a dog"))).job
    await step(svc)
    hunyuan.errors(2)
    for attempt in (1, 2):
        await due_now(parts.db, job.id)
        await step(svc)
        job = await _get(svc, job.id)
        assert job.state == "submitted" and job.attempts == attempt
        assert job.error is not None and "HTTP 503" in job.error
        # Backoff: at least a second (the interval here is 0.01 s), doubling, jittered by up to -25 %.
        assert job.next_poll_at is not None
        assert job.next_poll_at - job.updated_at >= timedelta(seconds=0.7 * 2 ** (attempt - 1))
    await due_now(parts.db, job.id)
    await step(svc)
    job = await _get(svc, job.id)
    assert job.state == "delivered" and job.attempts == 0


async def test_a_refused_submission_fails_and_tells_the_owner(parts: Parts, hunyuan: FakeHunyuan) -> None:
    svc = parts.service
    hunyuan.server.queue("POST", "/v1/api/video/submit", _status(400, "prompt too long"))
    job = (await svc.request(request("x" * 10))).job
    await step(svc)
    job = await _get(svc, job.id)
    assert job.state == "failed" and "prompt too long" in (job.error or "")
    (notice,) = await job_rows(parts)
    assert notice["idempotency_key"] == f"job:{job.id}:failed"
    assert notice["message"][0]["text"].startswith(f"Sorry, your video #{job.id} failed: hunyuan submit: HTTP 400")


async def test_only_due_jobs_with_free_leases_are_claimed(parts: Parts) -> None:
    svc = parts.service
    a = (await svc.request(request("a"))).job
    b = (await svc.request(request("b"))).job
    c = (await svc.request(request("c"))).job
    later = utcnow() + timedelta(hours=1)
    async with parts.db.engine.begin() as conn:
        await conn.execute(update(jobs_table).where(jobs_table.c.id == b.id).values(next_poll_at=later))
        await conn.execute(
            update(jobs_table).where(jobs_table.c.id == c.id).values(holder="someone", lease_until=later)
        )
    claimed = await svc.repo.claim_due(10)
    assert [j.id for j in claimed] == [a.id]
    assert claimed[0].holder == "me" and claimed[0].lease_until is not None
    assert await svc.repo.claim_due(10) == []  # now leased by me
    # The other holder's lease expires: its job can be taken over.
    async with parts.db.engine.begin() as conn:
        await conn.execute(update(jobs_table).where(jobs_table.c.id == c.id).values(lease_until=utcnow()))
    assert [j.id for j in await svc.repo.claim_due(10)] == [c.id]


async def test_a_worker_that_lost_its_lease_cannot_overwrite(parts: Parts) -> None:
    svc = parts.service
    job = (await svc.request(request("fenced"))).job
    (mine,) = await svc.repo.claim_due(1)
    # The lease expired and another process took the job over.
    async with parts.db.engine.begin() as conn:
        await conn.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(lease_until=utcnow()))
    other = parts.other("other")
    (theirs,) = await other.repo.claim_due(1)
    assert theirs.id == mine.id
    assert not await svc.repo.change(job.id, ["queued"], state="failed")
    assert await other.repo.change(job.id, ["queued"], state="submitted", provider_job_id="p1")
    assert (await _get(svc, job.id)).state == "submitted"


async def test_killed_between_queueing_the_result_and_marking_it_delivered(parts: Parts, hunyuan: FakeHunyuan) -> None:
    """The outbox key dedupes: the result is queued once however often delivery restarts."""
    svc = parts.service
    job = (await svc.request(request("twice"))).job
    await step(svc)
    await due_now(parts.db, job.id)
    # Deliver, then pretend the process died before it recorded `delivered`.
    await step(svc)
    async with parts.db.engine.begin() as conn:
        await conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job.id)
            .values(state="succeeded", holder="dead", lease_until=utcnow(), next_poll_at=utcnow())
        )
    assert await step(svc) == 1
    assert (await _get(svc, job.id)).state == "delivered"
    assert len(await job_rows(parts)) == 1
    assert len(hunyuan.server.calls("/files/1452550001.mp4")) == 1  # the stored file was reused


async def test_an_expired_result_url_fails_the_job_with_a_notice(parts: Parts, hunyuan: FakeHunyuan) -> None:
    svc = parts.service
    job = (await svc.request(request("gone"))).job
    await step(svc)
    hunyuan.server.queue("GET", "/files/{name}", _status(403, "Request has expired"))
    await due_now(parts.db, job.id)
    await step(svc)
    job = await _get(svc, job.id)
    assert job.state == "failed" and "could not be downloaded" in (job.error or "")
    (notice,) = await job_rows(parts)
    assert "Request has expired" in notice["message"][0]["text"]


async def test_a_result_larger_than_the_cap_is_refused(parts: Parts) -> None:
    svc = parts.service
    svc._delivery.max_download_bytes = 10  # the cap is the delivery's
    job = (await svc.request(request("huge"))).job
    await step(svc)
    await due_now(parts.db, job.id)
    await step(svc)
    job = await _get(svc, job.id)
    assert job.state == "failed" and job.error == "the result is larger than 0 MB"
    assert list(parts.settings.media_dir.glob("*.part")) == []


async def test_admin_retry_starts_a_new_round_with_new_keys(parts: Parts, hunyuan: FakeHunyuan) -> None:
    svc = parts.service
    job = (await svc.request(request("[fail] once"))).job
    await step(svc)
    await due_now(parts.db, job.id)
    await step(svc)
    assert (await _get(svc, job.id)).state == "failed"
    assert (await svc.retry(f"#{job.id}")) is not None
    job = await _get(svc, job.id)
    assert (
        job.state == "queued"
        and job.retries == 1
        and job.error is None
        and job.key("result") == f"job:{job.id}:1:result"
    )
    assert await svc.retry(job.id) == job  # only a finished-badly job can be retried: unchanged
    counts = await svc.counts()
    assert counts["queued"] == 1 and counts["delivered"] == 0 and set(counts) >= {"timed_out", "cancelled"}


async def test_an_image_lost_in_a_restart_is_submitted_once_more_then_failed(tmp_path: Path) -> None:
    fake = FakeImages()
    await fake.start()
    p = await _parts(tmp_path, providers_toml(image=fake.url))
    try:
        svc = p.service
        req = JobRequest(owner="fake:u1", chat=CHAT, skill="image", prompt="a kite", origin="fake:i1")
        # As a process that died while making it would leave it: submitted once, lease expired.
        lost = NewJob("fake:u1", CHAT, "image", "image", "a kite", 30, origin="fake:i1", state="submitted", attempts=1)
        job, _ = await svc.repo.create(lost)
        await step(svc)
        job = await _get(svc, job.id)
        assert job.state == "delivered" and job.attempts == 2
        (result,) = await job_rows(p)
        assert result["message"][0]["type"] == "image" and Path(result["message"][0]["path"]).read_bytes() == PNG_1X1
        # The event handled again after that: it finds the job, nothing is made twice.
        outcome = await svc.request_image(req)
        assert outcome.how == "job" and outcome.job.id == job.id
        assert len(fake.server.calls("/v1/images/generations")) == 1

        twice = NewJob("fake:u1", CHAT, "image", "image", "a boat", 30, state="submitted", attempts=2)
        job2, _ = await svc.repo.create(twice)
        await step(svc)
        job2 = await _get(svc, job2.id)
        assert job2.state == "failed" and "restarted" in (job2.error or "")
        notice = [r for r in await job_rows(p) if r["idempotency_key"] == f"job:{job2.id}:failed"]
        assert notice and notice[0]["message"][0]["text"].startswith(f"Sorry, your image #{job2.id} failed")
        assert len(fake.server.calls("/v1/images/generations")) == 1
    finally:
        await p.service.stop()
        await p.db.close()
        await fake.stop()


async def test_image_handled_again_after_a_crash_answers_the_same(tmp_path: Path) -> None:
    fake = FakeImages()
    await fake.start()
    p = await _parts(tmp_path, providers_toml(image=fake.url))
    try:
        req = JobRequest(owner="fake:u1", chat=CHAT, skill="image", prompt="a kite", origin="fake:i9")
        first = await p.service.request_image(req)
        again = await p.service.request_image(req)
        assert first.how == again.how == "done"
        assert first.media is not None and again.media is not None and first.media.path == again.media.path
        assert len(fake.server.calls("/v1/images/generations")) == 1
    finally:
        await p.service.stop()
        await p.db.close()
        await fake.stop()


async def test_two_pollers_on_postgresql_never_claim_the_same_job(tmp_path: Path, hunyuan: FakeHunyuan) -> None:
    async with pg_database() as url:
        p = await _parts(tmp_path, providers_toml(hunyuan=hunyuan.url), url=url)
        try:
            for i in range(300):
                await p.service.repo.create(NewJob("fake:u", CHAT, "video", "hunyuan", f"p{i}", 60))
            a, b = p.service, p.other("other")
            await b.open()
            claims_a, claims_b = await _race(a, b)
            ids_a = {j.id for batch in claims_a for j in batch}
            ids_b = {j.id for batch in claims_b for j in batch}
            assert not ids_a & ids_b
            assert len(ids_a) + len(ids_b) == 300
            await b.stop()
        finally:
            await p.service.stop()
            await p.db.close()


class AlwaysRunning:
    """A video provider whose every poll answers "running" at once: many polls end together."""

    name = "hunyuan"
    media = "video"
    poll_interval_s = 3600.0
    timeout_s = 86400.0

    def __init__(self) -> None:
        self.polls = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def submit(self, prompt: str) -> str:
        return "p"

    async def poll(self, provider_job_id: str) -> Poll:
        self.polls += 1
        return Poll("running")


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path}/hub.db"
        else:
            url = await stack.enter_async_context(pg_database())
        db = Database(url)
        await migrate(db)
        await db.start()
        try:
            yield db
        finally:
            await db.close()


class Statements:
    """The statements sent on an engine while counting, by their first word."""

    def __init__(self, db: Database) -> None:
        self.seen: list[str] = []
        self._engine = db.engine.sync_engine

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.seen.append(statement.lstrip().split(None, 1)[0].upper())

    def __enter__(self) -> Statements:
        event.listen(self._engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self._engine, "before_cursor_execute", self._count)


async def _running_jobs(svc: JobService, n: int) -> list[Job]:
    """`n` jobs the provider is making, all due now."""
    made = [
        (await svc.repo.create(NewJob("fake:u", CHAT, "video", "hunyuan", f"p{i}", 86400, origin=f"r{i}")))[0]
        for i in range(n)
    ]
    async with svc.repo._db.engine.begin() as conn:
        await conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_([j.id for j in made]))
            .values(state="running", provider_job_id="p", submitted_at=utcnow(), progress_noted=True)
        )
    return made


async def test_a_tick_claims_and_reschedules_with_one_statement_each(any_db: Database, tmp_path: Path) -> None:
    provider = AlwaysRunning()
    media = MediaStore(any_db, tmp_path / "media")
    outbox = Outbox(OutboxRepo(any_db, "me"), media, {}, ChatRepo(any_db), Metrics())
    repo = JobRepo(any_db, "me", 30)
    delivery = JobDelivery(repo, outbox, media)
    images = ImageJobs(repo, delivery, media, None)
    svc = JobService(repo, delivery, images, Metrics(), providers={"video": provider}, concurrency=60, batch=60)
    await svc.open()
    try:
        made = await _running_jobs(svc, 60)
        # One of them ends sooner than the provider's interval: its next poll is its deadline.
        soon = made[7]
        deadline = utcnow() + timedelta(seconds=30)
        async with any_db.engine.begin() as conn:
            await conn.execute(update(jobs_table).where(jobs_table.c.id == soon.id).values(deadline_at=deadline))
        before = utcnow()
        with Statements(any_db) as sent:
            assert await step(svc) == 60
        after = utcnow()
        assert provider.polls == 60
        # The claim and the reschedule; SQLite also looks before it takes the write lock.
        assert sent.seen.count("UPDATE") == 2
        assert sent.seen.count("SELECT") == (1 if any_db.is_sqlite else 0)
        for job in made:
            now = await _get(svc, job.id)
            assert now.state == "running" and now.holder is None and now.lease_until is None
            assert now.next_poll_at is not None
            if job.id == soon.id:
                assert now.next_poll_at == deadline
            else:
                assert before + timedelta(hours=1) <= now.next_poll_at <= after + timedelta(hours=1)
        assert await step(svc) == 0
        # Its deadline comes: it is claimed once more and times out, its owner told.
        async with any_db.engine.begin() as conn:
            await conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == soon.id)
                .values(deadline_at=utcnow() - timedelta(seconds=1), next_poll_at=utcnow() - timedelta(seconds=1))
            )
        assert await step(svc) == 1
        assert provider.polls == 60
        assert (await _get(svc, soon.id)).state == "timed_out"
        rows = [r for r in await OutboxRepo(any_db, "reader").all_rows() if r["origin"] == "job"]
        assert [r["idempotency_key"] for r in rows] == [f"job:{soon.id}:timed_out"]
    finally:
        await svc.stop()


async def test_changes_batched_together_apply_only_where_the_fence_holds(any_db: Database) -> None:
    repo = JobRepo(any_db, "me", 30)
    made = [
        (await repo.create(NewJob("fake:u", CHAT, "video", "hunyuan", f"p{i}", 600, origin=f"f{i}")))[0]
        for i in range(9)
    ]
    a, lost, cancelled, d, e, f, g, h, i = (j.id for j in made)
    assert len(await repo.claim_due(10)) == 9
    async with any_db.engine.begin() as conn:
        await conn.execute(update(jobs_table).where(jobs_table.c.id == lost).values(holder="other"))
    await repo.cancel(cancelled)
    t1, t2 = utcnow() + timedelta(seconds=100), utcnow() + timedelta(seconds=200)

    def notice(job_id: str) -> NewMessage:
        return NewMessage(target=CHAT, message=Message.of(f"about {job_id}"), idempotency_key=f"job:{job_id}:x")

    commits = any_db.writer.commits
    with Statements(any_db) as sent:
        results = await asyncio.gather(
            # One shape, its values differing from job to job.
            repo.change(a, ["queued"], notice=notice(a), attempts=1, error="e1", next_poll_at=t1),
            repo.change(lost, ["queued"], notice=notice(lost), attempts=1, error="e2", next_poll_at=t1),
            repo.change(cancelled, ["queued"], notice=notice(cancelled), attempts=1, error="e3", next_poll_at=t2),
            repo.change(d, ["queued"], attempts=2, error=None, next_poll_at=t2),
            # One job twice: the second change sees the first.
            repo.change(e, ["queued"], release=False, state="submitted", provider_job_id="p1"),
            repo.change(e, ["submitted"], state="running"),
            # Results, kept leased.
            repo.change(f, ["queued"], release=False, state="succeeded", result={"url": "f"}),
            repo.change(g, ["queued"], release=False, state="succeeded", result={"url": "g", "n": [1]}),
            # Next polls after different intervals; the longer one stops at the job's deadline.
            repo.change(h, ["queued"], attempts=3, next_poll_at=NextPoll(100)),
            repo.change(i, ["queued"], attempts=3, next_poll_at=NextPoll(5000)),
        )
    assert any_db.writer.commits == commits + 1  # one batch, one transaction
    assert results == [True, False, False, True, True, True, True, True, True, True]
    # One UPDATE per shape (those with varying values start WITH their rows), and the second round.
    assert sent.seen.count("UPDATE") + sent.seen.count("WITH") == 5
    ja, jl, jc, jd, je, jf, jg = [await repo.get(i) for i in (a, lost, cancelled, d, e, f, g)]
    assert ja is not None and (ja.attempts, ja.error, ja.next_poll_at, ja.holder) == (1, "e1", t1, None)
    assert jl is not None and (jl.attempts, jl.error, jl.holder) == (0, None, "other")
    assert jc is not None and (jc.state, jc.attempts, jc.error) == ("cancelled", 0, None)
    assert jd is not None and (jd.attempts, jd.error, jd.next_poll_at) == (2, None, t2)
    assert je is not None and (je.state, je.provider_job_id, je.holder) == ("running", "p1", None)
    assert jf is not None and (jf.state, jf.result, jf.holder) == ("succeeded", {"url": "f"}, "me")
    assert jg is not None and (jg.result, jg.holder) == ({"url": "g", "n": [1]}, "me")
    assert jg.lease_until is not None and jg.lease_until > utcnow() + timedelta(seconds=20)
    jh, ji = await repo.get(h), await repo.get(i)
    assert jh is not None and jh.next_poll_at is not None
    assert jh.next_poll_at == jh.updated_at + timedelta(seconds=100) and jh.holder is None
    assert ji is not None and ji.next_poll_at == ji.deadline_at and ji.attempts == 3
    keys = [r["idempotency_key"] for r in await OutboxRepo(any_db, "reader").all_rows()]
    assert keys == [f"job:{a}:x"]  # only the change that applied told anyone


async def _race(a: JobService, b: JobService) -> tuple[list[list[Job]], list[list[Job]]]:
    got_a: list[list[Job]] = []
    got_b: list[list[Job]] = []

    async def take(svc: JobService, into: list[list[Job]]) -> None:
        while batch := await svc.repo.claim_due(25):
            into.append(batch)

    await asyncio.gather(take(a, got_a), take(b, got_b), take(a, got_a), take(b, got_b))
    return got_a, got_b


async def _get(svc: JobService, job_id: str) -> Job:
    job = await svc.get(job_id)
    assert job is not None
    return job


def _status(status: int, message: str) -> Any:
    from aiohttp import web

    return web.json_response({"error": {"message": message}}, status=status)


def test_the_hunyuan_base_url_is_the_host_alone(tmp_path: Path) -> None:
    from hub.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, '[providers.hunyuan]\nbase_url = "https://tokenhub.example.com/v1"\napi_key = "k"\n')
    assert [key for key, _ in caught.value.problems] == ["providers.hunyuan.base_url"]
    ok = make_settings(tmp_path, '[providers.hunyuan]\nbase_url = "https://tokenhub.example.com/"\napi_key = "k"\n')
    assert ok.providers.hunyuan is not None and ok.providers.hunyuan.base_url == "https://tokenhub.example.com"
    assert ok.providers.hunyuan.model == "hy-video-1.5"
