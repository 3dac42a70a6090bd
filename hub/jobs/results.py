"""What becomes of a job: its result delivered, its owner told, a transient error retried later.

A finished job's media is downloaded into the media store and queued in the outbox under a key
derived from the job, then marked delivered: a kill at any moment followed by a restart queues
it once, and the outbox sends it once. Notices are keyed the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from hub.backoff import backoff_delay
from hub.delivery import Outbox
from hub.durations import duration
from hub.errors import ProviderError
from hub.events import Audio, Image, Message, Video
from hub.fetch import Fetcher, FetchPolicy, FetchTooLarge
from hub.i18n import N_, Texts, texts
from hub.i18n.language import HINT_KEY, ChatLanguages
from hub.redact import safe_text
from hub.storage.db import utcnow
from hub.storage.jobs import ACTIVE, DELIVERED, FAILED, SUCCEEDED, TIMED_OUT, Job, JobRepo
from hub.storage.media import MediaStore, MediaTooLarge, StoredMedia
from hub.storage.outbox import NewMessage

# The poller's logger: a job's whole story is under one name.
log = logging.getLogger(__name__)

# The skill behind each kind of job, and what its result is.
SKILL_MEDIA: dict[str, type[Video] | type[Audio] | type[Image]] = {"video": Video, "music": Audio, "image": Image}
MEDIA_DEFAULTS = {"video": ("mp4", "video/mp4"), "music": ("mp3", "audio/mpeg"), "image": ("png", "image/png")}
SKILL_KIND = {"video": "video", "music": "audio", "image": "image"}
MAX_DELIVERY_ATTEMPTS = 8
BACKOFF_CAP_S = 300.0

# What the owner is told, by skill: one whole sentence each (the reason is a clause of its own).
STARTED = {
    "video": N_("%(job)s has started: your video is being made now."),
    "music": N_("%(job)s has started: your music is being made now."),
    "image": N_("%(job)s has started: your image is being made now."),
}
FAILED_NOTICE = {
    "video": N_("Sorry, your video %(job)s failed: %(reason)s"),
    "music": N_("Sorry, your music %(job)s failed: %(reason)s"),
    "image": N_("Sorry, your image %(job)s failed: %(reason)s"),
}
TIMED_OUT_NOTICE = {
    "video": N_("Sorry, your video %(job)s timed out: %(reason)s."),
    "music": N_("Sorry, your music %(job)s timed out: %(reason)s."),
    "image": N_("Sorry, your image %(job)s timed out: %(reason)s."),
}


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a job ended badly, said in the chat's language when its notice is written.

    `msgid` (marked with N_) is filled with `values`, and `%(limit)s` with `limit_s` as a
    duration; without a msgid, `values["text"]` is the provider's own words, said as they are.
    The job's `error` column keeps the English (for operators)."""

    msgid: str | None
    values: Mapping[str, str | int] = field(default_factory=dict)
    limit_s: float | None = None

    @classmethod
    def words(cls, text: str) -> Reason:
        return cls(None, {"text": text})

    def say(self, t: Texts) -> str:
        if self.msgid is None:
            return str(self.values.get("text", ""))
        values: dict[str, object] = dict(self.values)
        if self.limit_s is not None:
            values["limit"] = duration(timedelta(seconds=self.limit_s), t)
        return t(self.msgid, **values)

    @property
    def english(self) -> str:
        return self.say(texts("en"))

    def redacted(self) -> Reason:
        """With any signed URL in the provider's words masked."""
        values = {k: safe_text(v) if isinstance(v, str) else v for k, v in self.values.items()}
        return Reason(self.msgid, values, self.limit_s)

    def to_json(self) -> dict[str, Any]:
        return {"msgid": self.msgid, "values": dict(self.values), "limit_s": self.limit_s}

    @classmethod
    def from_json(cls, data: object) -> Reason | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("values"), Mapping):
            return None
        msgid, limit_s = data.get("msgid"), data.get("limit_s")
        return cls(
            msgid if isinstance(msgid, str) else None,
            {str(k): v for k, v in data["values"].items() if isinstance(v, str | int)},
            float(limit_s) if isinstance(limit_s, int | float) else None,
        )


# Why a job ends whose provider was taken out of the configuration since.
GONE = {
    "video": N_("video generation is no longer set up on this hub"),
    "music": N_("music generation is no longer set up on this hub"),
    "image": N_("image generation is no longer set up on this hub"),
}


def no_longer_set_up(skill: str) -> Reason:
    return Reason(GONE.get(skill, N_("this kind of job is no longer set up on this hub")))


def too_large(limit_bytes: int, *, image: bool = False) -> Reason:
    mb = limit_bytes // (1024 * 1024)
    if image:
        return Reason(N_("the image is larger than %(mb)s MB"), {"mb": mb})
    return Reason(N_("the result is larger than %(mb)s MB"), {"mb": mb})


class JobDelivery:
    """Results into the chat, notices to the owner, retries for later; owns the download session."""

    def __init__(
        self,
        repo: JobRepo,
        outbox: Outbox,
        media: MediaStore,
        *,
        max_download_bytes: int = 512 * 1024 * 1024,
        fetch_policy: FetchPolicy | None = None,
        languages: ChatLanguages | None = None,
    ) -> None:
        self._repo = repo
        self._outbox = outbox
        self._media = media
        # The chat's language for notices (None: English, for tools without chats).
        self._languages = languages
        self.max_download_bytes = max_download_bytes
        # Results come from URLs the provider names: only public addresses, or those configured.
        self._fetcher = Fetcher(fetch_policy or FetchPolicy())

    async def open(self) -> None:
        pass  # the fetcher opens its session on first use

    async def close(self) -> None:
        await self._fetcher.close()

    async def deliver(self, job: Job) -> None:
        """Fetch the result into the media store, queue it for the chat, mark it delivered."""
        result = dict(job.result)
        path = result.get("path")
        if not path or not await asyncio.to_thread(Path(path).exists):
            try:
                stored = await self.fetch(job, str(result.get("url") or ""))
            except (MediaTooLarge, FetchTooLarge) as exc:
                await self.finish_badly(job, FAILED, too_large(exc.limit))
                return
            except ProviderError as exc:
                if exc.retryable and job.attempts + 1 < MAX_DELIVERY_ATTEMPTS:
                    await self.back_off(job, 2.0, str(exc))
                else:
                    reason = Reason(N_("the result could not be downloaded (%(error)s)"), {"error": str(exc)})
                    await self.finish_badly(job, FAILED, reason)
                return
            result.update(path=str(stored.path), name=stored.name, mime=stored.mime, size=stored.size)
            if not await self._repo.change(job.id, [SUCCEEDED], release=False, result=result):
                return
        # The result is queued with the state change: /jobs never says "succeeded" beside it.
        if await self._repo.change(
            job.id,
            [SUCCEEDED],
            notice=self._result_message(job, result),
            state=DELIVERED,
            finished_at=utcnow(),
            next_poll_at=None,
        ):
            self._outbox.wake()
            log.info(
                "event=job_delivered job=%s skill=%s chat=%s size=%s", job.id, job.skill, job.chat, result.get("size")
            )

    def _result_message(self, job: Job, result: Mapping[str, Any]) -> NewMessage:
        segment = SKILL_MEDIA[job.skill](
            path=str(result["path"]),
            name=result.get("name"),
            mime=result.get("mime"),
            size=result.get("size"),
            caption=job.prompt,
        )
        return NewMessage(
            target=job.chat,
            message=Message((segment,)),
            quote=job.quote,
            context=job.context,
            origin="job",
            idempotency_key=job.key("result"),
        )

    async def waiting(self, jobs: list[Job]) -> set[str]:
        """Jobs whose result (or final notice) is parked in the outbox as `waiting`."""
        keys = {job.key(what): job.id for job in jobs for what in ("result", FAILED, TIMED_OUT)}
        statuses = await self._outbox.repo.statuses(list(keys))
        return {keys[k] for k, status in statuses.items() if status == "waiting"}

    async def fetch(self, job: Job, url: str) -> StoredMedia:
        """Download a result into the media store, up to `max_download_bytes`."""
        if not url:
            raise ProviderError("the provider gave no result URL", retryable=False)
        from hub.providers.generation import download  # a job ran, so a provider is configured

        ext, default_mime = MEDIA_DEFAULTS[job.skill]
        async with download(self._fetcher, url, max_bytes=self.max_download_bytes) as (ctype, chunks):
            mime = (ctype or "").split(";")[0].strip() or default_mime
            if mime in ("application/octet-stream", "binary/octet-stream"):
                mime = default_mime
            return await self._media.save_stream(
                chunks,
                max_bytes=self.max_download_bytes,
                name=f"{job.skill}-{job.id}.{ext}",
                mime=mime,
                kind=SKILL_KIND[job.skill],
            )

    async def texts_for(self, job: Job) -> Texts:
        """The texts of the job's chat: its language now, from the event's hint too."""
        if self._languages is None:
            return texts("en")
        return texts(await self._languages.of_chat(str(job.chat), job.context.get(HINT_KEY)))

    def notice(self, job: Job, what: str, text: str) -> NewMessage:
        """A message about the job, keyed by it: queued with the change of state it tells of."""
        return NewMessage(
            target=job.chat,
            message=Message.of(text),
            quote=job.quote,
            context=job.context,
            origin="job",
            idempotency_key=job.key(what),
        )

    async def notify(self, job: Job, what: str, text: str) -> None:
        await self._outbox.put(self.notice(job, what, text))

    async def change_and_tell(self, job: Job, expect: Any, notice: NewMessage | None, **values: Any) -> bool:
        """A fenced change of state and its notice, in one transaction; False if not ours."""
        ok = await self._repo.change(job.id, expect, notice=notice, **values)
        if ok and notice is not None:
            self._outbox.wake()
        return ok

    async def finish_badly(self, job: Job, state: str, reason: Reason, *, tell: bool = True) -> None:
        """End a job as failed or timed_out, telling its owner in the same transaction."""
        reason = reason.redacted()  # a provider's message may carry a signed URL
        error = reason.english
        notice: NewMessage | None = None
        if tell:
            t = await self.texts_for(job)
            said = TIMED_OUT_NOTICE if state == TIMED_OUT else FAILED_NOTICE
            notice = self.notice(job, state, t(said[job.skill], job=job.ref, reason=reason.say(t)))
        if await self.change_and_tell(
            job, ACTIVE, notice, state=state, error=error[:2000], finished_at=utcnow(), next_poll_at=None
        ):
            log.info("event=job_%s job=%s reason=%r", state, job.id, error)

    async def back_off(self, job: Job, base_s: float, error: str) -> None:
        """A transient error: try again later, longer each time, without changing state."""
        error = safe_text(error)
        attempts = job.attempts + 1
        # From the provider's interval (at least a second), doubling, capped, jittered.
        delay = backoff_delay(attempts, base=max(base_s, 1.0), cap=BACKOFF_CAP_S, low=0.75)
        at = utcnow() + timedelta(seconds=delay)
        if job.deadline_at is not None and job.state != SUCCEEDED:
            at = min(at, job.deadline_at)
        await self._repo.change(job.id, [job.state], attempts=attempts, error=error[:2000], next_poll_at=at)
        log.info(
            "event=job_backoff job=%s state=%s attempts=%d delay_s=%.1f error=%r",
            job.id,
            job.state,
            attempts,
            delay,
            error,
        )
