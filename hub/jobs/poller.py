"""The jobs poller: APScheduler wakes it; each tick claims due jobs and moves them on.

A job's state lives in its row (storage/jobs.py); APScheduler only wakes the poller. Each tick
claims the due jobs (next poll time passed, lease free or expired) with a lease, works on them
concurrently with a bound, and reschedules each at its provider's interval, backing off on
transient errors without changing state. Delivering results and telling owners is in
results.py; images, which the request itself waits for, in images.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hub.errors import ProviderError
from hub.i18n import N_
from hub.jobs.images import IMAGE_PROVIDER, ImageJobs
from hub.jobs.results import STARTED, JobDelivery, Reason, no_longer_set_up
from hub.metrics import Metrics
from hub.storage.db import utcnow
from hub.storage.jobs import FAILED, QUEUED, RUNNING, SUBMITTED, SUCCEEDED, TIMED_OUT, Job, JobRepo, NextPoll

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from hub.providers.generation import JobProvider, Poll

log = logging.getLogger(__name__)


class JobPoller:
    """The state machine that carries jobs from queued to delivered, and its lifecycle."""

    def __init__(
        self,
        repo: JobRepo,
        delivery: JobDelivery,
        images: ImageJobs,
        metrics: Metrics,
        *,
        providers: Mapping[str, JobProvider],
        release_all_at_start: bool = False,
        concurrency: int = 32,
        batch: int = 100,
        tick_s: float | None = None,
    ) -> None:
        self.repo = repo
        self._delivery = delivery
        self._images = images
        self._metrics = metrics
        # By skill name: "video" → hunyuan, "music" → the music gateway.
        self._providers = dict(providers)
        self._by_name = {p.name: p for p in self._providers.values()}
        self._release_all = release_all_at_start
        self.concurrency = concurrency
        self.batch = batch
        intervals = [p.poll_interval_s for p in self._providers.values()]
        # Often enough to honour the shortest poll interval; idle ticks are one indexed query.
        self.tick_s = tick_s if tick_s is not None else max(0.05, min([1.0, *(i / 2 for i in intervals)]))
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._held: set[str] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self._ticking = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._again = False
        self._saturated = False
        self._stopping = False

    def configured(self, skill: str) -> bool:
        return self._images.configured if skill == "image" else skill in self._providers

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the client sessions; ticks then run only when called (tests, the benchmark)."""
        self._stopping = False
        await self._delivery.open()
        for p in self._providers.values():
            await p.start()
        await self._images.start()

    async def start(self) -> None:
        """Open, and let APScheduler tick, renew leases and count jobs."""
        await self.open()
        if self._release_all:
            await self.repo.release()
        if not any(self.configured(skill) for skill in ("video", "music", "image")):
            # Nothing can make a job: no scheduler (and no APScheduler import, ~1 MB at idle).
            log.info("event=jobs_idle reason=no_providers")
            return
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

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
        await self._images.close()
        await self._delivery.close()

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

    def _spawn(self, job: Job, work: Coroutine[Any, Any, None]) -> None:
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
            await self._delivery.deliver(job)
        elif job.provider == IMAGE_PROVIDER:
            await self._images.resume(job)
        elif job.deadline_at is not None and utcnow() >= job.deadline_at:
            limit_s = (job.deadline_at - job.created_at).total_seconds()
            await self._delivery.finish_badly(job, TIMED_OUT, Reason(N_("no result within %(limit)s"), limit_s=limit_s))
        else:
            await self._advance(job)
        log.debug("event=job_worked job=%s state=%s ms=%.1f", job.id, job.state, (time.perf_counter() - started) * 1000)

    async def _advance(self, job: Job) -> None:
        """Submit a queued job, or poll a submitted one, and act on what the provider says."""
        provider = self._by_name.get(job.provider)
        if provider is None:
            await self._delivery.finish_badly(job, FAILED, no_longer_set_up(job.skill))
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
                    next_poll_at=NextPoll(provider.poll_interval_s),
                ):
                    log.info(
                        "event=job_submitted job=%s provider=%s provider_job=%s", job.id, job.provider, provider_job_id
                    )
                return
            poll = await provider.poll(job.provider_job_id)
        except ProviderError as exc:
            if exc.retryable:
                await self._delivery.back_off(job, provider.poll_interval_s, str(exc))
            else:
                await self._delivery.finish_badly(job, FAILED, Reason.words(str(exc)))
            return
        await self._on_poll(job, provider, poll)

    async def _on_poll(self, job: Job, provider: JobProvider, poll: Poll) -> None:
        """Act on a provider's answer to a poll."""
        if poll.status == "completed" and poll.url:
            result = {"url": poll.url}
            if await self.repo.change(
                job.id, [SUBMITTED, RUNNING], release=False, state=SUCCEEDED, result=result, attempts=0, error=None
            ):
                log.info("event=job_succeeded job=%s provider=%s", job.id, job.provider)
                await self._delivery.deliver(dataclasses.replace(job, state=SUCCEEDED, result=result, attempts=0))
        elif poll.status == "failed":
            reason = Reason.words(poll.error) if poll.error else Reason(N_("the provider gave no reason"))
            await self._delivery.finish_badly(job, FAILED, reason)
        elif poll.status == "running":
            notice = None
            if not job.progress_noted:
                t = await self._delivery.texts_for(job)
                notice = self._delivery.notice(job, "progress", t(STARTED[job.skill], job=job.ref))
            await self._delivery.change_and_tell(
                job,
                [SUBMITTED, RUNNING],
                notice,
                state=RUNNING,
                progress_noted=True,
                attempts=0,
                error=None,
                next_poll_at=NextPoll(provider.poll_interval_s),
            )
        else:
            await self.repo.change(
                job.id, [job.state], attempts=0, error=None, next_poll_at=NextPoll(provider.poll_interval_s)
            )
