"""Images: the one kind of job the request itself waits for.

The request waits up to `job_after_s` for the image and answers with it; past that the same row
becomes a job like any other, delivered through the outbox. A process that dies while making
an image leaves the row for the poller, which makes it once more (`resume`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hub.errors import ProviderError
from hub.i18n import N_
from hub.jobs.results import JobDelivery, Reason, no_longer_set_up, too_large
from hub.storage.db import utcnow
from hub.storage.jobs import DELIVERED, FAILED, SUBMITTED, SUCCEEDED, TIMED_OUT, Job, JobRepo, NewJob
from hub.storage.media import MediaStore, MediaTooLarge, StoredMedia

if TYPE_CHECKING:
    # The providers' module (and its HTTP client) is imported with a configured provider only.
    from hub.providers.generation import GeneratedImage, ImageProvider

# The poller's logger: a job's whole story is under one name.
log = logging.getLogger(__name__)

IMAGE_PROVIDER = "image"

# Runs work on a job under the poller's concurrency bound and lease keeping.
Spawn = Callable[[Job, Coroutine[Any, Any, None]], None]


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    """`done`: the image is at `media` (answer with it); `failed`: `error` says why; `job`: it
    became a job; `same`: an identical request is in flight (`job`)."""

    how: Literal["done", "failed", "job", "same"]
    job: Job
    media: StoredMedia | None = None
    error: Reason | None = None
    # The provider took longer than its limit: the job ends timed_out, not failed.
    timed_out: bool = False


@dataclass(slots=True)
class _Handoff:
    """Who answers with an image: the waiting request, until it gives up and the job takes over."""

    future: asyncio.Future[ImageOutcome]
    taken_over: bool = False
    answering: bool = False


class ImageJobs:
    """Making images for a waiting request, and as jobs; `provider` None: not set up (any more)."""

    def __init__(self, repo: JobRepo, delivery: JobDelivery, media: MediaStore, provider: ImageProvider | None) -> None:
        self._repo = repo
        self._delivery = delivery
        self._media = media
        self._provider = provider

    @property
    def configured(self) -> bool:
        return self._provider is not None

    @property
    def timeout_s(self) -> float | None:
        return self._provider.timeout_s if self._provider is not None else None

    async def start(self) -> None:
        if self._provider is not None:
            await self._provider.start()

    async def close(self) -> None:
        if self._provider is not None:
            await self._provider.close()

    async def request(self, new: NewJob, spawn: Spawn) -> ImageOutcome:
        """Make the image for `new` (the row to create), waiting up to `job_after_s`."""
        images = self._provider
        assert images is not None, "no image provider"
        if new.origin is not None and (job := await self._repo.by_origin(new.origin)) is not None:
            return self._outcome_of(job)
        if (same := await self._repo.find_in_flight(new.owner, new.chat, new.skill, new.prompt)) is not None:
            return ImageOutcome("same", same)
        job, created = await self._repo.create(dataclasses.replace(new, state=SUBMITTED, hold=True, attempts=1))
        if not created:
            return self._outcome_of(job)
        log.info("event=job_created job=%s skill=image chat=%s owner=%s", job.id, job.chat, job.owner)
        handoff = _Handoff(asyncio.get_running_loop().create_future())
        spawn(job, self._make(job, handoff))
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
            reason = Reason.from_json(job.result.get("reason")) or Reason.words(job.error or "")
            return ImageOutcome("failed", job, error=reason)
        return ImageOutcome("job", job)

    async def resume(self, job: Job) -> None:
        """An image job found by the poller: its process died while making it, or an admin
        retried it. Submitted once more after a restart; a second loss fails it."""
        if job.state == SUBMITTED and job.attempts >= 2:
            reason = Reason(N_("the hub restarted while making it; please ask again"))
            await self._delivery.finish_badly(job, FAILED, reason)
            return
        if not await self._repo.change(job.id, [job.state], release=False, state=SUBMITTED, attempts=job.attempts + 1):
            return
        log.info("event=image_resubmitted job=%s attempts=%d", job.id, job.attempts + 1)
        await self._make(dataclasses.replace(job, state=SUBMITTED, attempts=job.attempts + 1), None)

    async def _make(self, job: Job, handoff: _Handoff | None) -> None:
        """Generate; answer through the waiting request if it is still there, else deliver."""
        images = self._provider
        outcome: ImageOutcome
        if images is None:
            outcome = ImageOutcome("failed", job, error=no_longer_set_up("image"))
        else:
            try:
                image = await asyncio.wait_for(images.generate(job.prompt), timeout=images.timeout_s)
                stored = await self._store(job, image)
                outcome = ImageOutcome("done", job, media=stored)
            except TimeoutError:
                reason = Reason(N_("no image within %(limit)s"), limit_s=images.timeout_s)
                outcome = ImageOutcome("failed", job, error=reason, timed_out=True)
            except MediaTooLarge as exc:
                outcome = ImageOutcome("failed", job, error=too_large(exc.limit, image=True))
            except ProviderError as exc:
                outcome = ImageOutcome("failed", job, error=Reason.words(str(exc)))
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
            if await self._repo.change(job.id, [SUBMITTED], release=False, state=SUCCEEDED, result=result):
                await self._delivery.deliver(dataclasses.replace(job, state=SUCCEEDED, result=result))
        else:
            state = TIMED_OUT if outcome.timed_out else FAILED
            await self._delivery.finish_badly(job, state, outcome.error or Reason(N_("unknown error")))

    async def _settle_replied(self, job: Job, outcome: ImageOutcome) -> None:
        now = utcnow()
        if outcome.how == "done" and outcome.media is not None:
            result = _media_result(outcome.media) | {"replied": True}
            await self._repo.change(
                job.id, [SUBMITTED], state=DELIVERED, result=result, finished_at=now, next_poll_at=None
            )
        else:
            # The reason in neutral form: a re-handled event says it again in the chat's language.
            reason = (outcome.error or Reason(N_("unknown error"))).redacted()
            await self._repo.change(
                job.id,
                [SUBMITTED],
                state=FAILED,
                result={"replied": True, "reason": reason.to_json()},
                error=reason.english[:2000],
                finished_at=now,
                next_poll_at=None,
            )

    async def _store(self, job: Job, image: GeneratedImage) -> StoredMedia:
        name = f"image-{job.id}.png"
        limit = self._delivery.max_download_bytes
        if image.data is not None:
            if len(image.data) > limit:
                raise MediaTooLarge(limit)
            return await self._media.save_bytes(image.data, name=name, mime=image.mime, kind="image")
        return await self._delivery.fetch(job, image.url or "")


def _media_result(stored: StoredMedia) -> dict[str, Any]:
    return {"path": str(stored.path), "name": stored.name, "mime": stored.mime, "size": stored.size}
