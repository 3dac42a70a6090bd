"""/video, /music, /image, /jobs and /cancel: ask for media, follow and cancel your jobs.

The handlers only create the job and answer: the poller does the rest, so the chat is never
held up (an image waits at most `job_after_s` before it becomes a job too).
"""

from __future__ import annotations

from collections.abc import Callable

from hub.durations import ago
from hub.events import Image, Message
from hub.i18n import texts
from hub.jobs.service import JobRequest, JobService
from hub.routing.context import Context
from hub.storage.jobs import CANCELLED, IN_FLIGHT, SUCCEEDED, Job, parse_job_id

USUALLY = {"video": "usually 1–3 minutes", "music": "usually about a minute", "image": "usually within a minute"}
EXAMPLES = {"video": "a piglet singing", "music": "a calm piano piece", "image": "a cat in a spacesuit"}
NOT_SET_UP = {
    "video": "Video generation is not set up on this hub.",
    "music": "Music generation is not set up on this hub.",
    "image": "Image generation is not set up on this hub.",
}
RECENT = 10


# Platforms that only answer (QQ): a result that comes late waits for the user's next message.
ANSWER_ONLY = "when it is ready, send me any message to receive it"
WAITING_FOR_YOU = "waiting for you (send me any message to receive it)"


def queued_text(job: Job, *, answer_only: bool = False) -> str:
    if answer_only:
        return f"queued as {job.ref} — {USUALLY[job.skill]}. If it is not here by then, {ANSWER_ONLY}."
    return f"queued as {job.ref} — I'll post it here when it's ready, {USUALLY[job.skill]}"


def answer_only(ctx: Context) -> bool:
    """Whether the chat's platform can only answer messages (it said so in the event)."""
    return bool(ctx.event.context.get("reply_only"))


def status_text(job: Job) -> str:
    """One line on where a job stands, for the same request asked again."""
    age = ago(job.created_at, texts("en"))
    return (
        f"You already asked for that: {job.ref} is {job.state} (asked {age}). "
        f"I'll post it here when it's ready, {USUALLY[job.skill]}."
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
        if not self._jobs.configured(skill):
            await ctx.reply(NOT_SET_UP[skill])
            return False
        if not ctx.args.strip():
            await ctx.reply(f"Tell me what to make, e.g. /{skill} {EXAMPLES[skill]}")
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
            await ctx.reply(status_text(requested.job))
        else:
            await ctx.reply(queued_text(requested.job, answer_only=answer_only(ctx)))

    async def image(self, ctx: Context) -> None:
        if not await self._check(ctx, "image"):
            return
        await ctx.action("upload_photo")
        outcome = await self._jobs.request_image(self._request(ctx, "image"))
        job = outcome.job
        if outcome.how == "done" and outcome.media is not None:
            m = outcome.media
            image = Image(path=str(m.path), name=m.name, mime=m.mime, size=m.size, caption=job.prompt)
            await ctx.reply(Message((image,)))
        elif outcome.how == "failed":
            await ctx.reply(f"Sorry, I could not make that image: {outcome.error}")
        elif outcome.how == "same":
            await ctx.reply(status_text(job))
        else:
            await ctx.reply(f"This one takes longer: {queued_text(job, answer_only=answer_only(ctx))}")

    async def list_jobs(self, ctx: Context) -> None:
        jobs = await self._jobs.list(owner=ctx.user, limit=RECENT)
        if not jobs:
            await ctx.reply("You have no jobs yet. Try /video a piglet singing")
            return
        waiting = await self._jobs.waiting_for_user(jobs)
        lines = ["Your recent jobs:"]
        for job in jobs:
            state = WAITING_FOR_YOU if job.id in waiting else job.state
            lines.append(f"{job.ref} {job.skill} · {state} · {_short(job.prompt)} ({ago(job.created_at, ctx.t)})")
        await ctx.reply("\n".join(lines))

    async def cancel(self, ctx: Context) -> None:
        arg = ctx.args.strip()
        job_id = parse_job_id(arg) if arg else None
        if job_id is None:
            await ctx.reply("Which job? Send /cancel <job id>, e.g. /cancel #7f3a (see /jobs).")
            return
        job = await self._jobs.get(job_id)
        if job is None or (job.owner != ctx.user and not ctx.is_admin):
            # Someone else's job is none of this person's business, not even its existence.
            await ctx.reply(f"There is no job #{job_id} of yours.")
            return
        if job.state not in IN_FLIGHT:
            if job.state == SUCCEEDED:
                await ctx.reply(f"{job.ref} is already done and on its way.")
            else:
                await ctx.reply(f"{job.ref} is already {job.state}.")
            return
        after = await self._jobs.cancel(job.id)
        if after is not None and after.state == CANCELLED:
            await ctx.reply(f"Cancelled {job.ref}.")
        else:
            await ctx.reply(f"{job.ref} could not be cancelled: it is {after.state if after else 'gone'}.")


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
