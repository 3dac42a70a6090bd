"""/video, /music, /image, /jobs and /cancel: ask for media, follow and cancel your jobs.

The handlers only create the job and answer: the poller does the rest, so the chat is never
held up (an image waits at most `job_after_s` before it becomes a job too).
"""

from __future__ import annotations

from collections.abc import Callable

from hub.durations import ago
from hub.events import Image, Message
from hub.i18n import N_, Texts
from hub.jobs.service import JobRequest, JobService
from hub.routing.context import Context
from hub.storage.jobs import (
    CANCELLED,
    DELIVERED,
    FAILED,
    IN_FLIGHT,
    QUEUED,
    RUNNING,
    SUBMITTED,
    SUCCEEDED,
    TIMED_OUT,
    Job,
    parse_job_id,
)

SKILLS = ("image", "video", "music")
# The configuration section each generation skill needs.
SECTION_OF = {"image": "[providers.image]", "video": "[providers.hunyuan]", "music": "[providers.music]"}
EXAMPLES = {"video": N_("a piglet singing"), "music": N_("a calm piano piece"), "image": N_("a cat in a spacesuit")}
NOT_SET_UP = {
    "video": N_(
        "Video generation is not set up on this hub. Whoever runs it can turn it on: add a %(section)s "
        "section (base_url, api_key, key_id) to config/hub.toml and restart the hub."
    ),
    "music": N_(
        "Music generation is not set up on this hub. Whoever runs it can turn it on: add a %(section)s "
        "section (base_url, api_key) to config/hub.toml and restart the hub."
    ),
    "image": N_(
        "Image generation is not set up on this hub. Whoever runs it can turn it on: add a %(section)s "
        "section (kind, base_url, api_key) to config/hub.toml and restart the hub."
    ),
}
# The answer to a request that became a job, by skill; platforms that only answer (QQ) have
# their own: a result that comes late waits for the user's next message.
QUEUED_TEXT = {
    "video": N_("queued as %(job)s — I'll post it here when it's ready, usually 1–3 minutes"),
    "music": N_("queued as %(job)s — I'll post it here when it's ready, usually about a minute"),
    "image": N_(
        "This one takes longer: queued as %(job)s — I'll post it here when it's ready, usually within a minute"
    ),
}
QUEUED_ANSWER_ONLY = {
    "video": N_(
        "queued as %(job)s — usually 1–3 minutes. If it is not here by then, send me any message to receive it."
    ),
    "music": N_(
        "queued as %(job)s — usually about a minute. If it is not here by then, send me any message to receive it."
    ),
    "image": N_(
        "This one takes longer: queued as %(job)s — usually within a minute. If it is not here by then, "
        "send me any message to receive it."
    ),
}
# A job's state as people read it (the words of /jobs).
STATE = {
    QUEUED: N_("queued"),
    SUBMITTED: N_("submitted"),
    RUNNING: N_("being made"),
    SUCCEEDED: N_("done"),
    DELIVERED: N_("delivered"),
    FAILED: N_("failed"),
    TIMED_OUT: N_("timed out"),
    CANCELLED: N_("cancelled"),
}
WAITING_FOR_YOU = N_("waiting for you (send me any message to receive it)")
KIND = {"video": N_("video"), "music": N_("music"), "image": N_("image")}
# Why a job that is over cannot be cancelled, and what then.
ALREADY = {
    SUCCEEDED: N_("%(job)s is already done and on its way."),
    DELIVERED: N_("%(job)s is already done and delivered."),
    FAILED: N_("%(job)s already failed: there is nothing to cancel."),
    TIMED_OUT: N_("%(job)s already timed out: there is nothing to cancel."),
    CANCELLED: N_("%(job)s is already cancelled."),
}
RECENT = 10


def queued_text(job: Job, t: Texts, *, answer_only: bool = False) -> str:
    return t((QUEUED_ANSWER_ONLY if answer_only else QUEUED_TEXT)[job.skill], job=job.ref)


def answer_only(ctx: Context) -> bool:
    """Whether the chat's platform can only answer messages (it said so in the event)."""
    return bool(ctx.event.context.get("reply_only"))


def state_text(state: str, t: Texts) -> str:
    return t(STATE[state]) if state in STATE else state


def status_text(job: Job, t: Texts, *, answer_only: bool = False) -> str:
    """Where a job stands, for the same request asked again."""
    values = {"job": job.ref, "state": state_text(job.state, t), "age": ago(job.created_at, t)}
    if answer_only:
        return t(
            "You already asked for that: %(job)s is %(state)s (asked %(age)s). "
            "When it is ready, send me any message to receive it.",
            **values,
        )
    return t(
        "You already asked for that: %(job)s is %(state)s (asked %(age)s). I'll post it here when it's ready.", **values
    )


class MediaSkills:
    def __init__(self, jobs: JobService, usable: Callable[[Context, str], bool] | None = None) -> None:
        self._jobs = jobs
        # Whether a command is one this person can run on this hub (what /jobs may suggest).
        self._usable = usable or (lambda ctx, name: self._jobs.configured(name))

    def _request(self, ctx: Context, skill: str) -> JobRequest:
        ev = ctx.event
        return JobRequest(
            owner=ctx.user,
            chat=ev.chat,
            skill=skill,
            prompt=ctx.args.strip(),
            origin=f"{ev.channel}:{ev.id}",
            quote=ev.id,
            context=ev.context,
        )

    async def _check(self, ctx: Context, skill: str) -> bool:
        t = ctx.t
        if not self._jobs.configured(skill):
            await ctx.reply(t(NOT_SET_UP[skill], section=SECTION_OF[skill]))
            return False
        if not ctx.args.strip():
            await ctx.reply(
                t("Tell me what to make, e.g. /%(command)s %(example)s", command=skill, example=t(EXAMPLES[skill]))
            )
            return False
        return True

    async def video(self, ctx: Context) -> None:
        await self._long(ctx, "video")

    async def music(self, ctx: Context) -> None:
        await self._long(ctx, "music")

    async def _long(self, ctx: Context, skill: str) -> None:
        if not await self._check(ctx, skill):
            return
        requested = await self._jobs.request(self._request(ctx, skill))
        if requested.how == "same":
            await ctx.reply(status_text(requested.job, ctx.t, answer_only=answer_only(ctx)))
        else:
            await ctx.reply(queued_text(requested.job, ctx.t, answer_only=answer_only(ctx)))

    async def image(self, ctx: Context) -> None:
        if not await self._check(ctx, "image"):
            return
        t = ctx.t
        await ctx.action("upload_photo")
        outcome = await self._jobs.request_image(self._request(ctx, "image"))
        job = outcome.job
        if outcome.how == "done" and outcome.media is not None:
            m = outcome.media
            image = Image(path=str(m.path), name=m.name, mime=m.mime, size=m.size, caption=job.prompt)
            await ctx.reply(Message((image,)))
        elif outcome.how == "failed":
            reason = outcome.error.redacted().say(t) if outcome.error else t("unknown error")
            await ctx.reply(t("Sorry, I could not make that image: %(reason)s", reason=reason))
        elif outcome.how == "same":
            await ctx.reply(status_text(job, t, answer_only=answer_only(ctx)))
        else:
            await ctx.reply(queued_text(job, t, answer_only=answer_only(ctx)))

    async def list_jobs(self, ctx: Context) -> None:
        t = ctx.t
        jobs = await self._jobs.list(owner=ctx.user, limit=RECENT)
        if not jobs:
            await ctx.reply(self._no_jobs(ctx))
            return
        waiting = await self._jobs.waiting_for_user(jobs)
        lines = [t("Your recent jobs:")]
        for job in jobs:
            state = t(WAITING_FOR_YOU) if job.id in waiting else state_text(job.state, t)
            kind = t(KIND[job.skill]) if job.skill in KIND else job.skill
            lines.append(
                t(
                    "%(job)s %(kind)s · %(state)s · %(prompt)s (%(age)s)",
                    job=job.ref,
                    kind=kind,
                    state=state,
                    prompt=_short(job.prompt),
                    age=ago(job.created_at, t),
                )
            )
        await ctx.reply("\n".join(lines))

    def _no_jobs(self, ctx: Context) -> str:
        """No jobs yet: what to try, among the commands this person can run here."""
        t = ctx.t
        for name in ("video", "image", "music"):
            if self._usable(ctx, name):
                return t("You have no jobs yet. Try /%(command)s %(example)s", command=name, example=t(EXAMPLES[name]))
        if any(self._jobs.configured(name) for name in SKILLS):
            return t(
                "You have no jobs yet. Images, videos and music are switched off in this chat: "
                "an admin can turn them back on."
            )
        return t(
            "You have no jobs yet. This hub cannot make images, videos or music yet: whoever runs it can "
            "add a %(image)s, %(video)s or %(music)s section to config/hub.toml and restart the hub.",
            image=SECTION_OF["image"],
            video=SECTION_OF["video"],
            music=SECTION_OF["music"],
        )

    async def cancel(self, ctx: Context) -> None:
        t = ctx.t
        arg = ctx.args.strip()
        job_id = parse_job_id(arg) if arg else None
        if job_id is None:
            await ctx.reply(t("Which job? Send /cancel <job id>, e.g. /cancel #7f3a (see /jobs)."))
            return
        job = await self._jobs.get(job_id)
        if job is None or (job.owner != ctx.user and not ctx.is_admin):
            # Someone else's job is none of this person's business, not even its existence.
            ref = "#" + job_id
            await ctx.reply(t("There is no job %(job)s of yours. Send /jobs to see yours.", job=ref))
            return
        if job.state not in IN_FLIGHT:
            text = ALREADY.get(job.state)
            await ctx.reply(t(text, job=job.ref) if text else t("%(job)s cannot be cancelled now.", job=job.ref))
            return
        after = await self._jobs.cancel(job.id)
        if after is not None and after.state == CANCELLED:
            await ctx.reply(t("Cancelled %(job)s.", job=job.ref))
        elif after is None:
            await ctx.reply(t("%(job)s could not be cancelled: it is gone.", job=job.ref))
        else:
            await ctx.reply(
                t("%(job)s could not be cancelled: it is %(state)s now.", job=job.ref, state=state_text(after.state, t))
            )


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
