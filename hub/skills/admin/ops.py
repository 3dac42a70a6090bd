"""The `/admin` subcommands that look at and steer the running hub: status, jobs, job, who, broadcast.

Channel and job states are shown as the words `/admin jobs <state>` and /healthz use, in
both languages; the sentences around them are translated.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from hub.delivery import Outbox
from hub.durations import ago, describe_wait
from hub.events import ChatRef, Message
from hub.i18n import N_, Texts, texts
from hub.i18n.language import HINT_KEY, ChatLanguages
from hub.jobs.service import JobService
from hub.routing.access import SKILLS, AccessControl
from hub.routing.context import Context
from hub.routing.people import People
from hub.skills.admin.args import AdminArgs, Invalid, listing
from hub.skills.admin.repos import AdminRepos
from hub.storage.db import utcnow
from hub.storage.jobs import CANCELLED, QUEUED, STATES, Job, parse_job_id
from hub.storage.outbox import NewMessage

LIST_LIMIT = 20
# What `/admin who` says a user is, in this order.
STANDING = (N_("admin"), N_("banned"), N_("approved"))


def job_line(job: Job, t: Texts) -> str:
    prompt = job.prompt if len(job.prompt) <= 40 else job.prompt[:39] + "…"
    return t(
        "%(job)s %(skill)s %(state)s · %(owner)s in %(chat)s · %(age)s · %(prompt)s",
        job=job.ref,
        skill=job.skill,
        state=job.state,
        owner=job.owner,
        chat=str(job.chat),
        age=ago(job.created_at, t),
        prompt=repr(prompt),
    )


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
        languages: ChatLanguages,
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
        self._languages = languages
        self._broadcast_gap = 1.0 / broadcast_per_s
        self._clock = clock
        self._started = time.monotonic()
        self._started_at = clock()

    async def status(self, ctx: Context, rest: str) -> str:
        t = ctx.t
        now = self._clock()
        hour_ago = now - timedelta(hours=1)
        channels = [f"{name} {state}" for name, state in self._channel_status().items()]
        counts = [f"{s} {n}" for s, n in (await self._jobs.counts()).items() if n]
        sends = await self._repos.outbox.failures_since(hour_ago)
        events = await self._repos.inbox.failures_since(hour_ago)
        failed_jobs = await self._jobs.repo.failures_since(hour_ago)
        return "\n".join(
            [
                t(
                    "Up %(span)s (since %(since)s UTC)",
                    span=describe_wait(time.monotonic() - self._started, t),
                    since=self._started_at.strftime("%Y-%m-%d %H:%M"),
                ),
                t("Channels: %(channels)s", channels=listing(t, channels)) if channels else t("Channels: none"),
                t(
                    "Backlog: inbox %(inbox)s, outbox %(outbox)s",
                    inbox=await self._repos.inbox.backlog(),
                    outbox=await self._repos.outbox.backlog(),
                ),
                t("Jobs: %(jobs)s", jobs=listing(t, counts)) if counts else t("Jobs: none"),
                t(
                    "Failures in the last hour: sends %(sends)s, events %(events)s, jobs %(jobs)s",
                    sends=sends,
                    events=events,
                    jobs=failed_jobs,
                ),
            ]
        )

    async def jobs(self, ctx: Context, rest: str) -> str:
        t = ctx.t
        args = self._args.words(rest)
        state = args[0].lower() if args else None
        if len(args) > 1 or (state is not None and state not in STATES):
            raise Invalid(N_("Give one state, or none: %(states)s."), states=STATES)
        found = await self._jobs.list(state, LIST_LIMIT)
        if not found:
            return t("No %(state)s jobs.", state=state) if state else t("No jobs yet.")
        if state:
            title = t.plural("Latest %(n)s %(state)s job:", "Latest %(n)s %(state)s jobs:", len(found), state=state)
        else:
            title = t.plural("Latest %(n)s job:", "Latest %(n)s jobs:", len(found))
        return "\n".join([title, *(job_line(j, t) for j in found)])

    async def job(self, ctx: Context, rest: str) -> str:
        t = ctx.t
        args = self._args.words(rest)
        if len(args) != 2 or args[1].lower() not in ("retry", "cancel"):
            raise Invalid(N_("Give the job's id, then retry or cancel."))
        job_id = parse_job_id(args[0])
        before = await self._jobs.get(job_id) if job_id else None
        if job_id is None or before is None:
            raise Invalid(N_("No job %(job)s. /admin jobs lists the latest ones."), job=args[0])
        if args[1].lower() == "cancel":
            after = await self._jobs.cancel(job_id)
            if after is None or after.state != CANCELLED or before.state == CANCELLED:
                raise Invalid(
                    N_("Job %(job)s is %(state)s: only a job still being made can be cancelled."),
                    job=before.ref,
                    state=before.state,
                )
            await self._tell_owner(after, "admin-cancel", N_("An admin cancelled your job %(job)s."))
            return t("Job %(job)s cancelled; %(owner)s has been told.", job=before.ref, owner=before.owner)
        after = await self._jobs.retry(job_id)
        if after is None or after.state != QUEUED or after.retries == before.retries:
            raise Invalid(
                N_("Job %(job)s is %(state)s: only a failed, timed-out or cancelled job can restart."),
                job=before.ref,
                state=before.state,
            )
        notice = N_("An admin restarted your job %(job)s; it comes here when it is done.")
        await self._tell_owner(after, "admin-retry", notice)
        return t(
            "Job %(job)s queued again; %(owner)s gets the result in %(chat)s.",
            job=before.ref,
            owner=before.owner,
            chat=str(before.chat),
        )

    async def _tell_owner(self, job: Job, what: str, notice: str) -> None:
        """`notice` (a msgid with `%(job)s`) into the job's chat, in that chat's language."""
        told = texts(await self._languages.of_chat(str(job.chat), job.context.get(HINT_KEY)))
        await self._outbox.put(
            NewMessage(
                target=job.chat,
                message=Message.of(told(notice, job=job.ref)),
                context=job.context,
                origin="admin",
                idempotency_key=job.key(what),
            )
        )

    async def who(self, ctx: Context, rest: str) -> str:
        t = ctx.t
        args = self._args.words(rest)
        if len(args) != 1:
            raise Invalid(N_("Name one user."))
        user = self._args.user(args[0])
        record = await self._repos.users.get(user)
        admin = await self._people.is_admin(user)
        flags = dict(zip(STANDING, (admin, record.banned, record.allowed), strict=True))
        standing = listing(t, (t(word) for word, on in flags.items() if on)) or t("a user")
        now = self._clock()
        today = now.astimezone(UTC).date()
        since = (today - timedelta(days=6)).isoformat()
        used = await self._repos.usage.for_user(user, since)
        if record.name:
            lines = [t("%(user)s (%(name)s): %(standing)s", user=user, name=record.name, standing=standing)]
        else:
            lines = [t("%(user)s: %(standing)s", user=user, standing=standing)]
        quota_parts = []
        for skill in SKILLS:
            limit = await self._access.limit_for(user, skill, is_admin=admin)
            n = next((c for d, s, c in used if d == today.isoformat() and s == skill), 0)
            quota_parts.append(f"{skill} {n}/{'∞' if limit is None else limit}")
        lines.append(t("Today (%(date)s UTC): %(usage)s", date=today.isoformat(), usage=listing(t, quota_parts)))
        week: dict[str, int] = {}
        for _, skill, n in used:
            week[skill] = week.get(skill, 0) + n
        if week:
            lines.append(t("Last 7 days: %(usage)s", usage=listing(t, (f"{s} {n}" for s, n in week.items()))))
        else:
            lines.append(t("Last 7 days: nothing"))
        recent = await self._jobs.list(None, 5, owner=user)
        if recent:
            lines.append(t("Recent jobs:"))
            lines += [job_line(j, t) for j in recent]
        else:
            lines.append(t("No jobs."))
        return "\n".join(lines)

    async def broadcast(self, ctx: Context, rest: str) -> str:
        """Queue one message per target through the outbox, paced, each with its own key.

        The keys derive from the command's event, so if the hub dies half-way the event is
        handled again after restart and the targets already queued are not sent twice. The
        text is the admin's own words: sent as written, in no catalog.
        """
        t = ctx.t
        spec, _, text = rest.partition(" ")
        text = text.strip()
        if not spec or not text:
            raise Invalid(N_("Give the targets, then the text."))
        if spec.lower() == "all":
            refs = await self._repos.chats.known()
            targets = [ChatRef.parse(r) for r in refs]
        else:
            targets = [self._args.chat(part) for part in spec.split(",") if part.strip()]
        unique = list(dict.fromkeys(targets))
        running = self._channel_status()
        skipped = [str(r) for r in unique if r.channel not in running]
        sending = [r for r in unique if r.channel in running]
        if not unique:
            if spec.lower() == "all":
                raise Invalid(N_("No chat to send to: the bot knows no chat yet."))
            raise Invalid(N_("Give the targets, then the text."))
        if not sending:
            raise Invalid(N_("No chat to send to: the channels of %(chats)s are not running."), chats=skipped)
        message = Message.of(text)
        for n, target in enumerate(sending):
            if n:
                await asyncio.sleep(self._broadcast_gap)  # paced: platforms limit messages per second
            digest = hashlib.sha256(f"{ctx.event.channel}:{ctx.event.id}:{target}".encode()).hexdigest()[:32]
            await self._outbox.put(
                NewMessage(target=target, message=message, origin="broadcast", idempotency_key=f"broadcast:{digest}")
            )
        if skipped:
            chats = listing(t, skipped)  # outside the call: extraction reads a nested `t` as a new text
            return t.plural(
                "Broadcast queued for %(n)s chat. Skipped (channel not running): %(chats)s.",
                "Broadcast queued for %(n)s chats. Skipped (channel not running): %(chats)s.",
                len(sending),
                chats=chats,
            )
        return t.plural("Broadcast queued for %(n)s chat.", "Broadcast queued for %(n)s chats.", len(sending))
