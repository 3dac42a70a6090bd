"""Long jobs: creating them from a request, and the APScheduler poller that carries them home.

A job's state lives in its row (storage/jobs.py); APScheduler only wakes the poller. Each tick
claims the due jobs (next poll time passed, lease free or expired) with a lease, works on them
concurrently with a bound, and reschedules each at its provider's interval, backing off on
transient errors without changing state. A finished job's media is downloaded into the media
store and queued in the outbox under a key derived from the job, then marked delivered: a kill
at any moment followed by a restart queues it once, and the outbox sends it once.

Images are the exception that proves the rule: the request itself waits up to `job_after_s`
for the image and answers with it; past that the same row becomes a job like any other.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from hub.delivery import Outbox
from hub.errors import ProviderError
from hub.events import Audio, ChatRef, Image, Message, Video
from hub.metrics import Metrics
from hub.providers.generation import GeneratedImage, ImageProvider, JobProvider, download
from hub.storage.db import utcnow
from hub.storage.jobs import (
    ACTIVE,
    CANCELLED,
    DELIVERED,
    FAILED,
    FINAL,
    IN_FLIGHT,
    QUEUED,
    RUNNING,
    STATES,
    SUBMITTED,
    SUCCEEDED,
    TIMED_OUT,
    Job,
    JobRepo,
    NewJob,
    parse_job_id,
)
from hub.storage.media import MediaStore, MediaTooLarge, StoredMedia
from hub.storage.outbox import NewMessage

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "DELIVERED",
    "FAILED",
    "FINAL",
    "IN_FLIGHT",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUBMITTED",
    "SUCCEEDED",
    "TIMED_OUT",
    "ImageOutcome",
    "Job",
    "JobRequest",
    "JobService",
    "Requested",
    "parse_job_id",
]

log = logging.getLogger("hub.jobs")

# The skill behind each kind of job, and what its result is.
SKILL_MEDIA: dict[str, type[Video] | type[Audio] | type[Image]] = {"video": Video, "music": Audio, "image": Image}
MEDIA_DEFAULTS = {"video": ("mp4", "video/mp4"), "music": ("mp3", "audio/mpeg"), "image": ("png", "image/png")}
NOUN = {"video": "video", "music": "music", "image": "image"}
IMAGE_PROVIDER = "image"
MAX_DELIVERY_ATTEMPTS = 8
BACKOFF_CAP_S = 300.0


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a skill asks for: everything needed to answer in the right chat much later."""

    owner: str
    chat: ChatRef
    skill: str
    prompt: str
    origin: str | None = None
    quote: str | None = None
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Requested:
    """`how`: created now; existing (this very request, handled before); same (an identical
    request from the same person is still in flight)."""

    job: Job
    how: Literal["created", "existing", "same"]


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    """`done`: the image is at `media` (answer with it); `failed`: `error` says why; `job`: it
    became a job; `same`: an identical request is in flight (`job`)."""

    how: Literal["done", "failed", "job", "same"]
    job: Job
    media: StoredMedia | None = None
    error: str | None = None


@dataclass(slots=True)
class _Handoff:
    """Who answers with an image: the waiting request, until it gives up and the job takes over."""

    future: asyncio.Future[ImageOutcome]
    taken_over: bool = False
    answering: bool = False


class JobService:
    """The jobs API for skills and admins, and the poller."""

    def __init__(
        self,
        repo: JobRepo,
        outbox: Outbox,
        media: MediaStore,
        metrics: Metrics,
        *,
        providers: Mapping[str, JobProvider],
        images: ImageProvider | None = None,
        release_all_at_start: bool = False,
        concurrency: int = 32,
        batch: int = 100,
        tick_s: float | None = None,
        max_download_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.repo = repo
        self._outbox = outbox
        self._media = media
        self._metrics = metrics
        # By skill name: "video" → hunyuan, "music" → the music gateway.
        self._providers = dict(providers)
        self._by_name = {p.name: p for p in self._providers.values()}
        self._images = images
        self._release_all = release_all_at_start
        self.concurrency = concurrency
        self.batch = batch
        intervals = [p.poll_interval_s for p in self._providers.values()]
        # Often enough to honour the shortest poll interval; idle ticks are one indexed query.
        self.tick_s = tick_s if tick_s is not None else max(0.05, min([1.0, *(i / 2 for i in intervals)]))
        self.max_download_bytes = max_download_bytes
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._held: set[str] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ticking = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._again = False
        self._saturated = False
        self._stopping = False

    # --- what skills and admins call ---------------------------------------------------------

    def configured(self, skill: str) -> bool:
        return self._images is not None if skill == "image" else skill in self._providers

    async def request(self, req: JobRequest) -> Requested:
        """Create a video or music job for a request, or find the one it already made."""
        provider = self._providers[req.skill]
        if req.origin is not None and (job := await self.repo.by_origin(req.origin)) is not None:
            return Requested(job, "existing")
        if (same := await self.repo.find_in_flight(req.owner, req.chat, req.skill, req.prompt)) is not None:
            return Requested(same, "same")
        job, created = await self.repo.create(self._new_job(req, provider.name, provider.timeout_s))
        if created:
            log.info("event=job_created job=%s skill=%s chat=%s owner=%s", job.id, job.skill, job.chat, job.owner)
            self.wake()
        return Requested(job, "created" if created else "existing")

    async def request_image(self, req: JobRequest) -> ImageOutcome:
        """Make an image, waiting up to `job_after_s`; past that it is delivered as a job."""
        images = self._images
        assert images is not None, "no image provider"
        if req.origin is not None and (job := await self.repo.by_origin(req.origin)) is not None:
            return self._outcome_of(job)
        if (same := await self.repo.find_in_flight(req.owner, req.chat, req.skill, req.prompt)) is not None:
            return ImageOutcome("same", same)
        new = dataclasses.replace(
            self._new_job(req, IMAGE_PROVIDER, images.timeout_s), state=SUBMITTED, hold=True, attempts=1
        )
        job, created = await self.repo.create(new)
        if not created:
            return self._outcome_of(job)
        log.info("event=job_created job=%s skill=image chat=%s owner=%s", job.id, job.chat, job.owner)
        handoff = _Handoff(asyncio.get_running_loop().create_future())
        self._spawn(job, self._make_image(job, handoff))
        try:
            return await asyncio.wait_for(asyncio.shield(handoff.future), timeout=images.job_after_s)
        except TimeoutError:
            # No await between these checks and the flags: the image's task sees one or the other.
            if handoff.answering:
                return await handoff.future
            handoff.taken_over = True
            log.info("event=image_became_job job=%s after_s=%.1f", job.id, images.job_after_s)
            return ImageOutcome("job", job)

    def _outcome_of(self, job: Job) -> ImageOutcome:
        """The answer to a request handled before (the event came again after a crash)."""
        if job.state == DELIVERED and job.result.get("replied") and job.result.get("path"):
            r = job.result
            path = Path(r["path"])
            stored = StoredMedia(path.name, path, r.get("name"), r.get("mime"), r.get("size", 0))
            return ImageOutcome("done", job, media=stored)
        if job.state in (FAILED, TIMED_OUT) and job.result.get("replied"):
            return ImageOutcome("failed", job, error=job.error)
        return ImageOutcome("job", job)

    def _new_job(self, req: JobRequest, provider: str, timeout_s: float) -> NewJob:
        return NewJob(
            owner=req.owner,
            chat=req.chat,
            skill=req.skill,
            provider=provider,
            prompt=req.prompt,
            timeout_s=timeout_s,
            origin=req.origin,
            quote=req.quote,
            context=req.context,
        )

    async def get(self, job_id: str) -> Job | None:
        """A job by `7f3a` or `#7f3a`."""
        parsed = parse_job_id(job_id)
        return await self.repo.get(parsed) if parsed else None

    async def list(self, state: str | None = None, limit: int = 20, *, owner: str | None = None) -> builtins.list[Job]:
        return await self.repo.list(state, limit, owner=owner)

    async def counts(self) -> dict[str, int]:
        return await self.repo.counts()

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job still in flight; returns it as it is now (None: no such job)."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            return None
        job = await self.repo.cancel(parsed)
        if job is not None and job.state == CANCELLED:
            log.info("event=job_cancelled job=%s", job.id)
        return job

    async def retry(self, job_id: str) -> Job | None:
        """Start a failed, timed-out or cancelled job again; returns it as it is now."""
        parsed = parse_job_id(job_id)
        job = await self.repo.get(parsed) if parsed else None
        if job is None:
            return None
        timeout = self._images.timeout_s if job.provider == IMAGE_PROVIDER and self._images else None
        provider = self._by_name.get(job.provider)
        timeout = timeout or (provider.timeout_s if provider else 600.0)
        after = await self.repo.retry(job.id, timeout)
        if after is not None and after.state == QUEUED:
            log.info("event=job_retried job=%s round=%d", after.id, after.retries)
            self.wake()
        return after

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the client sessions; ticks then run only when called (tests, the benchmark)."""
        self._stopping = False
        self._http = aiohttp.ClientSession()
        for p in self._providers.values():
            await p.start()
        if self._images is not None:
            await self._images.start()

    async def start(self) -> None:
        """Open, and let APScheduler tick, renew leases and count jobs."""
        await self.open()
        if self._release_all:
            await self.repo.release()
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        # Two instances: a tick that fires while one runs returns at once (see tick) instead of
        # being refused with a warning.
        common: dict[str, Any] = {"max_instances": 2, "coalesce": True, "misfire_grace_time": None}
        add = self._scheduler.add_job
        add(self._tick_job, "interval", seconds=self.tick_s, id="jobs-tick", next_run_time=now, **common)
        add(self._renew, "interval", seconds=max(0.2, self.repo.lease_s / 3), id="jobs-renew", **common)
        add(self._gauge, "interval", seconds=60, id="jobs-gauge", next_run_time=now, **common)
        self._scheduler.start()

    async def stop(self, grace_s: float = 3.0) -> None:
        """Stop claiming; give work under way `grace_s`; hand back the leases of the rest."""
        self._stopping = True
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
            self._scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # the shutdown runs on the loop
        tasks = list(self._inflight.values())
        held = list(self._held)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.repo.release(held)
        for p in self._providers.values():
            await p.close()
        if self._images is not None:
            await self._images.close()
        if self._http is not None:
            await self._http.close()

    def wake(self) -> None:
        """Tick now (a job was created): nothing waits for the next interval."""
        if self._ticking:
            self._again = True
        elif self._scheduler is not None and self._scheduler.running and not self._stopping:
            self._scheduler.modify_job("jobs-tick", next_run_time=datetime.now(UTC))

    # --- the poller --------------------------------------------------------------------------

    async def _tick_job(self) -> None:
        try:
            await self.tick()
        except asyncio.CancelledError:
            # The scheduler shutting down: the claimed rows' leases bring them back later.
            log.debug("event=jobs_tick_cancelled")
        except Exception:
            log.exception("event=jobs_tick_failed")

    async def tick(self) -> int:
        """Claim due jobs into the free slots and start working on them; returns how many."""
        if self._ticking:
            self._again = True
            return 0
        self._ticking = True
        self._idle.clear()
        claimed = 0
        try:
            while not self._stopping:
                self._again = False
                free = min(self.batch, self.concurrency - len(self._inflight))
                if free <= 0:
                    self._saturated = True
                    break
                jobs = await self.repo.claim_due(free)
                for job in jobs:
                    self._spawn(job, self._work(job))
                claimed += len(jobs)
                if len(jobs) < free and not self._again:
                    break
        finally:
            self._ticking = False
            self._idle.set()
        return claimed

    async def drain(self) -> None:
        """Wait until the work started so far is done (for tests and the benchmark)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    def _spawn(self, job: Job, work: Any) -> None:
        self._held.add(job.id)

        async def run() -> None:
            try:
                async with self._slots:
                    await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=job_work_failed job=%s state=%s", job.id, job.state)
            finally:
                self._inflight.pop(job.id, None)
                self._held.discard(job.id)
                if self._saturated:
                    self._saturated = False
                    self.wake()

        self._inflight[job.id] = asyncio.create_task(run(), name=f"job:{job.id}")

    async def _renew(self) -> None:
        try:
            await self.repo.renew(list(self._held))
        except Exception:
            log.exception("event=jobs_renew_failed")

    async def _gauge(self) -> None:
        try:
            for state, n in (await self.repo.counts()).items():
                self._metrics.jobs.labels(state).set(n)
        except Exception:
            log.exception("event=jobs_gauge_failed")

    async def _work(self, job: Job) -> None:
        started = time.perf_counter()
        if job.state == SUCCEEDED:
            await self._deliver(job)
        elif job.provider == IMAGE_PROVIDER:
            await self._resume_image(job)
        elif job.deadline_at is not None and utcnow() >= job.deadline_at:
            await self._finish_badly(job, TIMED_OUT, f"no result within {_duration(job.deadline_at - job.created_at)}")
        else:
            await self._advance(job)
        log.debug("event=job_worked job=%s state=%s ms=%.1f", job.id, job.state, (time.perf_counter() - started) * 1000)

    async def _advance(self, job: Job) -> None:
        """Submit a queued job, or poll a submitted one, and act on what the provider says."""
        provider = self._by_name.get(job.provider)
        if provider is None:
            await self._finish_badly(job, FAILED, f"{NOUN.get(job.skill, job.skill)} generation is not set up any more")
            return
        try:
            if job.state == QUEUED or job.provider_job_id is None:
                provider_job_id = await provider.submit(job.prompt)
                if await self.repo.change(
                    job.id,
                    [job.state],
                    state=SUBMITTED,
                    provider_job_id=provider_job_id,
                    submitted_at=utcnow(),
                    attempts=0,
                    error=None,
                    next_poll_at=self._next_poll(job, provider.poll_interval_s),
                ):
                    log.info(
                        "event=job_submitted job=%s provider=%s provider_job=%s", job.id, job.provider, provider_job_id
                    )
                return
            poll = await provider.poll(job.provider_job_id)
        except ProviderError as exc:
            if exc.retryable:
                await self._back_off(job, provider.poll_interval_s, str(exc))
            else:
                await self._finish_badly(job, FAILED, str(exc))
            return
        if poll.status == "completed" and poll.url:
            result = {"url": poll.url}
            if await self.repo.change(
                job.id, [SUBMITTED, RUNNING], release=False, state=SUCCEEDED, result=result, attempts=0, error=None
            ):
                log.info("event=job_succeeded job=%s provider=%s", job.id, job.provider)
                await self._deliver(dataclasses.replace(job, state=SUCCEEDED, result=result, attempts=0))
        elif poll.status == "failed":
            await self._finish_badly(job, FAILED, poll.error or "the provider gave no reason")
        elif poll.status == "running":
            if not job.progress_noted:
                await self._notify(job, "progress", f"{job.ref} has started: your {NOUN[job.skill]} is being made now.")
            await self.repo.change(
                job.id,
                [SUBMITTED, RUNNING],
                state=RUNNING,
                progress_noted=True,
                attempts=0,
                error=None,
                next_poll_at=self._next_poll(job, provider.poll_interval_s),
            )
        else:
            await self.repo.change(
                job.id, [job.state], attempts=0, error=None, next_poll_at=self._next_poll(job, provider.poll_interval_s)
            )

    def _next_poll(self, job: Job, interval_s: float) -> datetime:
        at = utcnow() + timedelta(seconds=interval_s)
        # Never sleep past the deadline: a job that will not finish is told so on time.
        return min(at, job.deadline_at) if job.deadline_at is not None and job.state != SUCCEEDED else at

    async def _back_off(self, job: Job, base_s: float, error: str) -> None:
        """A transient error: try again later, longer each time, without changing state."""
        attempts = job.attempts + 1
        # From the provider's interval (at least a second), doubling, capped, jittered.
        delay = min(BACKOFF_CAP_S, max(base_s, 1.0) * 2 ** (attempts - 1)) * random.uniform(0.75, 1.0)
        at = utcnow() + timedelta(seconds=delay)
        if job.deadline_at is not None and job.state != SUCCEEDED:
            at = min(at, job.deadline_at)
        await self.repo.change(job.id, [job.state], attempts=attempts, error=error[:2000], next_poll_at=at)
        log.info(
            "event=job_backoff job=%s state=%s attempts=%d delay_s=%.1f error=%r",
            job.id,
            job.state,
            attempts,
            delay,
            error,
        )

    # --- results and notices -----------------------------------------------------------------

    async def _deliver(self, job: Job) -> None:
        """Fetch the result into the media store, queue it for the chat, mark it delivered."""
        result = dict(job.result)
        path = result.get("path")
        if not path or not await asyncio.to_thread(Path(path).exists):
            try:
                stored = await self._fetch(job, str(result.get("url") or ""))
            except MediaTooLarge as exc:
                await self._finish_badly(job, FAILED, f"the result is larger than {exc.limit // (1024 * 1024)} MB")
                return
            except ProviderError as exc:
                if exc.retryable and job.attempts + 1 < MAX_DELIVERY_ATTEMPTS:
                    await self._back_off(job, 2.0, str(exc))
                else:
                    await self._finish_badly(job, FAILED, f"the result could not be downloaded ({exc})")
                return
            result.update(path=str(stored.path), name=stored.name, mime=stored.mime, size=stored.size)
            if not await self.repo.change(job.id, [SUCCEEDED], release=False, result=result):
                return
        await self._put_result(job, result)
        if await self.repo.change(job.id, [SUCCEEDED], state=DELIVERED, finished_at=utcnow(), next_poll_at=None):
            log.info(
                "event=job_delivered job=%s skill=%s chat=%s size=%s", job.id, job.skill, job.chat, result.get("size")
            )

    async def _put_result(self, job: Job, result: Mapping[str, Any]) -> None:
        segment = SKILL_MEDIA[job.skill](
            path=str(result["path"]),
            name=result.get("name"),
            mime=result.get("mime"),
            size=result.get("size"),
            caption=job.prompt,
        )
        await self._outbox.put(
            NewMessage(
                target=job.chat,
                message=Message((segment,)),
                quote=job.quote,
                context=job.context,
                origin="job",
                idempotency_key=job.key("result"),
            )
        )

    async def _fetch(self, job: Job, url: str) -> StoredMedia:
        if not url:
            raise ProviderError("the provider gave no result URL", retryable=False)
        assert self._http is not None
        ext, default_mime = MEDIA_DEFAULTS[job.skill]
        async with download(self._http, url) as (ctype, chunks):
            mime = (ctype or "").split(";")[0].strip() or default_mime
            if mime in ("application/octet-stream", "binary/octet-stream"):
                mime = default_mime
            return await self._media.save_stream(
                chunks, max_bytes=self.max_download_bytes, name=f"{job.skill}-{job.id}.{ext}", mime=mime
            )

    async def _notify(self, job: Job, what: str, text: str) -> None:
        await self._outbox.put(
            NewMessage(
                target=job.chat,
                message=Message.of(text),
                quote=job.quote,
                context=job.context,
                origin="job",
                idempotency_key=job.key(what),
            )
        )

    async def _finish_badly(self, job: Job, state: str, reason: str, *, tell: bool = True) -> None:
        """End a job as failed or timed_out, telling its owner (the notice first: it is keyed)."""
        noun = NOUN.get(job.skill, job.skill)
        if tell:
            if state == TIMED_OUT:
                text = f"Sorry, your {noun} {job.ref} timed out: {reason}."
            else:
                text = f"Sorry, your {noun} {job.ref} failed: {reason}"
            await self._notify(job, state, text)
        if await self.repo.change(
            job.id, ACTIVE, state=state, error=reason[:2000], finished_at=utcnow(), next_poll_at=None
        ):
            log.info("event=job_%s job=%s reason=%r", state, job.id, reason)

    # --- images ------------------------------------------------------------------------------

    async def _make_image(self, job: Job, handoff: _Handoff | None) -> None:
        """Generate; answer through the waiting request if it is still there, else deliver."""
        images = self._images
        outcome: ImageOutcome
        if images is None:
            outcome = ImageOutcome("failed", job, error="image generation is not set up any more")
        else:
            try:
                image = await asyncio.wait_for(images.generate(job.prompt), timeout=images.timeout_s)
                stored = await self._store_image(job, image)
                outcome = ImageOutcome("done", job, media=stored)
            except TimeoutError:
                limit = _duration(timedelta(seconds=images.timeout_s))
                outcome = ImageOutcome("failed", job, error=f"no image within {limit}")
            except MediaTooLarge as exc:
                outcome = ImageOutcome("failed", job, error=f"the image is larger than {exc.limit // (1024 * 1024)} MB")
            except ProviderError as exc:
                outcome = ImageOutcome("failed", job, error=str(exc))
        if handoff is not None and not handoff.taken_over:
            handoff.answering = True
            try:
                # Answered in the same exchange: recorded first, so a re-handled event answers the same.
                await self._settle_replied(job, outcome)
            finally:
                handoff.future.set_result(outcome)
            return
        if outcome.how == "done" and outcome.media is not None:
            result = _media_result(outcome.media)
            if await self.repo.change(job.id, [SUBMITTED], release=False, state=SUCCEEDED, result=result):
                await self._deliver(dataclasses.replace(job, state=SUCCEEDED, result=result))
        else:
            timed_out = (outcome.error or "").startswith("no image within")
            await self._finish_badly(job, TIMED_OUT if timed_out else FAILED, outcome.error or "unknown error")

    async def _settle_replied(self, job: Job, outcome: ImageOutcome) -> None:
        now = utcnow()
        if outcome.how == "done" and outcome.media is not None:
            result = _media_result(outcome.media) | {"replied": True}
            await self.repo.change(
                job.id, [SUBMITTED], state=DELIVERED, result=result, finished_at=now, next_poll_at=None
            )
        else:
            await self.repo.change(
                job.id,
                [SUBMITTED],
                state=FAILED,
                result={"replied": True},
                error=(outcome.error or "")[:2000],
                finished_at=now,
                next_poll_at=None,
            )

    async def _store_image(self, job: Job, image: GeneratedImage) -> StoredMedia:
        name = f"image-{job.id}.png"
        if image.data is not None:
            if len(image.data) > self.max_download_bytes:
                raise MediaTooLarge(self.max_download_bytes)
            return await self._media.save_bytes(image.data, name=name, mime=image.mime)
        return await self._fetch(job, image.url or "")

    async def _resume_image(self, job: Job) -> None:
        """An image job found by the poller: its process died while making it, or an admin
        retried it. Submitted once more after a restart; a second loss fails it."""
        if job.state == SUBMITTED and job.attempts >= 2:
            await self._finish_badly(job, FAILED, "the hub restarted while making it; please ask again")
            return
        if not await self.repo.change(job.id, [job.state], release=False, state=SUBMITTED, attempts=job.attempts + 1):
            return
        log.info("event=image_resubmitted job=%s attempts=%d", job.id, job.attempts + 1)
        await self._make_image(dataclasses.replace(job, state=SUBMITTED, attempts=job.attempts + 1), None)


def _media_result(stored: StoredMedia) -> dict[str, Any]:
    return {"path": str(stored.path), "name": stored.name, "mime": stored.mime, "size": stored.size}


def _duration(d: timedelta) -> str:
    s = round(d.total_seconds())
    if s < 120:
        return f"{s} s"
    return f"{round(s / 60)} min"
