"""The `/admin` subcommands that look at and steer the running hub: status, jobs, job, who, broadcast."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from hub.delivery import Outbox
from hub.durations import describe_wait
from hub.events import ChatRef, Message
from hub.i18n import texts
from hub.jobs.service import JobService
from hub.routing.access import SKILLS, AccessControl
from hub.routing.context import Context
from hub.routing.people import People
from hub.skills.admin.args import AdminArgs, Invalid
from hub.skills.admin.repos import AdminRepos
from hub.storage.db import utcnow
from hub.storage.jobs import CANCELLED, QUEUED, STATES, Job, parse_job_id
from hub.storage.outbox import NewMessage

LIST_LIMIT = 20


def job_line(job: Job, now: datetime) -> str:
    age = describe_wait((now - job.created_at).total_seconds(), texts("en"))
    prompt = job.prompt if len(job.prompt) <= 40 else job.prompt[:39] + "…"
    return f"{job.ref} {job.skill} {job.state} · {job.owner} in {job.chat} · {age} ago · {prompt!r}"


class AdminOps:
    def __init__(
        self,
        *,
        args: AdminArgs,
        repos: AdminRepos,
        channel_status: Callable[[], Mapping[str, str]],
        outbox: Outbox,
        jobs: JobService,
        people: People,
        access: AccessControl,
        broadcast_per_s: float = 20.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._args = args
        self._repos = repos
        # Each running channel's name and state: admin knows no channel, only this.
        self._channel_status = channel_status
        self._outbox = outbox
        self._jobs = jobs
        self._people = people
        self._access = access
        self._broadcast_gap = 1.0 / broadcast_per_s
        self._clock = clock
        self._started = time.monotonic()
        self._started_at = clock()

    async def status(self, ctx: Context, rest: str) -> str:
        now = self._clock()
        hour_ago = now - timedelta(hours=1)
        channels = ", ".join(f"{name} {state}" for name, state in self._channel_status().items()) or "none"
        counts = {s: n for s, n in (await self._jobs.counts()).items() if n}
        jobs = ", ".join(f"{s} {n}" for s, n in counts.items()) or "none"
        sends = await self._repos.outbox.failures_since(hour_ago)
        events = await self._repos.inbox.failures_since(hour_ago)
        failed_jobs = await self._jobs.repo.failures_since(hour_ago)
        return "\n".join(
            [
                f"Up {describe_wait(time.monotonic() - self._started, texts('en'))} "
                f"(since {self._started_at:%Y-%m-%d %H:%M} UTC)",
                f"Channels: {channels}",
                f"Backlog: inbox {await self._repos.inbox.backlog()}, outbox {await self._repos.outbox.backlog()}",
                f"Jobs: {jobs}",
                f"Failures in the last hour: {sends} sends, {events} events, {failed_jobs} jobs",
            ]
        )

    async def jobs(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        state = args[0].lower() if args else None
        if len(args) > 1 or (state is not None and state not in STATES):
            raise Invalid(f"Give one state, or none: {', '.join(STATES)}.")
        found = await self._jobs.list(state, LIST_LIMIT)
        if not found:
            return f"No {state} jobs." if state else "No jobs yet."
        now = self._clock()
        title = f"Latest {len(found)} {state + ' ' if state else ''}jobs:"
        return "\n".join([title, *(job_line(j, now) for j in found)])

    async def job(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 2 or args[1].lower() not in ("retry", "cancel"):
            raise Invalid("Give the job's id, then retry or cancel.")
        job_id = parse_job_id(args[0])
        before = await self._jobs.get(job_id) if job_id else None
        if job_id is None or before is None:
            raise Invalid(f"No job {args[0]}.")
        if args[1].lower() == "cancel":
            after = await self._jobs.cancel(job_id)
            if after is None or after.state != CANCELLED or before.state == CANCELLED:
                raise Invalid(f"Job {before.ref} is {before.state}: only a job still being made can be cancelled.")
            await self._tell_owner(after, "admin-cancel", f"An admin cancelled your job {after.ref}.")
            return f"Job {before.ref} cancelled; {before.owner} has been told."
        after = await self._jobs.retry(job_id)
        if after is None or after.state != QUEUED or after.retries == before.retries:
            raise Invalid(f"Job {before.ref} is {before.state}: only a failed, timed-out or cancelled job can restart.")
        text = f"An admin restarted your job {after.ref}; it comes here when it is done."
        await self._tell_owner(after, "admin-retry", text)
        return f"Job {before.ref} queued again; {before.owner} gets the result in {before.chat}."

    async def _tell_owner(self, job: Job, what: str, text: str) -> None:
        await self._outbox.put(
            NewMessage(
                target=job.chat,
                message=Message.of(text),
                context=job.context,
                origin="admin",
                idempotency_key=job.key(what),
            )
        )

    async def who(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 1:
            raise Invalid("Name one user.")
        user = self._args.user(args[0])
        record = await self._repos.users.get(user)
        admin = await self._people.is_admin(user)
        standing = [w for w, on in (("admin", admin), ("banned", record.banned), ("approved", record.allowed)) if on]
        now = self._clock()
        today = now.astimezone(UTC).date()
        since = (today - timedelta(days=6)).isoformat()
        used = await self._repos.usage.for_user(user, since)
        lines = [f"{user}{' (' + record.name + ')' if record.name else ''}: {', '.join(standing) or 'a user'}"]
        quota_parts = []
        for skill in SKILLS:
            limit = await self._access.limit_for(user, skill, is_admin=admin)
            n = next((c for d, s, c in used if d == today.isoformat() and s == skill), 0)
            quota_parts.append(f"{skill} {n}/{'∞' if limit is None else limit}")
        lines.append(f"Today ({today.isoformat()} UTC): {', '.join(quota_parts)}")
        week: dict[str, int] = {}
        for _, skill, n in used:
            week[skill] = week.get(skill, 0) + n
        lines.append(f"Last 7 days: {', '.join(f'{s} {n}' for s, n in week.items()) or 'nothing'}")
        recent = await self._jobs.list(None, 5, owner=user)
        if recent:
            lines.append("Recent jobs:")
            lines += [job_line(j, now) for j in recent]
        else:
            lines.append("No jobs.")
        return "\n".join(lines)

    async def broadcast(self, ctx: Context, rest: str) -> str:
        """Queue one message per target through the outbox, paced, each with its own key.

        The keys derive from the command's event, so if the hub dies half-way the event is
        handled again after restart and the targets already queued are not sent twice.
        """
        spec, _, text = rest.partition(" ")
        text = text.strip()
        if not spec or not text:
            raise Invalid("Give the targets, then the text.")
        if spec.lower() == "all":
            refs = await self._repos.chats.known()
            targets = [ChatRef.parse(r) for r in refs]
        else:
            targets = [self._args.chat(part) for part in spec.split(",") if part.strip()]
        unique = list(dict.fromkeys(targets))
        running = self._channel_status()
        skipped = [t for t in unique if t.channel not in running]
        sending = [t for t in unique if t.channel in running]
        off = f" Skipped (channel off): {', '.join(map(str, skipped))}." if skipped else ""
        if not sending:
            raise Invalid(f"No chat to send to.{off}")
        message = Message.of(text)
        for n, target in enumerate(sending):
            if n:
                await asyncio.sleep(self._broadcast_gap)  # paced: platforms limit messages per second
            digest = hashlib.sha256(f"{ctx.event.channel}:{ctx.event.id}:{target}".encode()).hexdigest()[:32]
            await self._outbox.put(
                NewMessage(target=target, message=message, origin="broadcast", idempotency_key=f"broadcast:{digest}")
            )
        return f"Broadcast queued for {len(sending)} chat{'s' if len(sending) != 1 else ''}.{off}"
