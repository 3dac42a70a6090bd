"""Long jobs: what skills and admins call to create, find, cancel and retry them.

The poller that carries them home (poller.py) is the base class: a job created here wakes it.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hub.events import ChatRef
from hub.jobs.images import IMAGE_PROVIDER, ImageOutcome
from hub.jobs.poller import JobPoller
from hub.storage.jobs import CANCELLED, QUEUED, Job, NewJob, parse_job_id

log = logging.getLogger(__name__)


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


class JobService(JobPoller):
    """The jobs API for skills and admins, on top of the poller."""

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
        timeout_s = self._images.timeout_s
        assert timeout_s is not None, "no image provider"
        return await self._images.request(self._new_job(req, IMAGE_PROVIDER, timeout_s), self._spawn)

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

    async def waiting_for_user(self, jobs: builtins.list[Job]) -> set[str]:
        """The ids of these jobs whose result waits in the outbox for the user's next message."""
        return await self._delivery.waiting(jobs)

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
        timeout = self._images.timeout_s if job.provider == IMAGE_PROVIDER else None
        provider = self._by_name.get(job.provider)
        timeout = timeout or (provider.timeout_s if provider else 600.0)
        after = await self.repo.retry(job.id, timeout)
        if after is not None and after.state == QUEUED:
            log.info("event=job_retried job=%s round=%d", after.id, after.retries)
            self.wake()
        return after
