"""Who may talk to the bot, how fast, and how much: the router's middlewares.

Three middlewares, registered outermost first: `policy` (open / allowlist / pairing for
private chats, open / allowlist for groups, per channel), `rate` (a token bucket per chat) and
`quota` (uses per user, per skill, per UTC day). Admins always pass the policy and the rate
limit, so whoever runs the bot cannot lock themselves out of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hub.durations import describe_wait
from hub.events import Event
from hub.i18n import N_, Texts
from hub.routing.context import Context, Handler
from hub.settings import AccessRules, AccessSettings, QuotasSettings
from hub.storage.admin import PairingRepo, QuotaRepo, UsageRepo
from hub.storage.chats import AuditRepo, UserRepo
from hub.storage.db import utcnow

log = logging.getLogger("hub.access")

# The skills quotas and `/admin skill` know; DESIGN.md names them.
SKILLS = ("chat", "image", "video", "music")
# How often a person kept out by the policy is answered (the code, or the refusal) per chat.
REFUSAL_REPLIES_PER_MINUTE = 5
# An approval made by another process is seen within this many seconds (this process's at once).
APPROVED_TTL_S = 3.0
# Daily usage is kept this long (for `/admin who`), then dropped.
USAGE_KEPT_DAYS = 35


# What a person kept out or held back is told; each says what to do next.
PAIRING = N_(
    "Hello! This bot talks only with people its admins have approved.\n"
    "Your pairing code is %(code)s (valid for %(left)s). Send it to an admin of this bot, "
    "who approves it with: /admin approve %(code)s\n"
    "Your id: %(user)s"
)
NOT_ALLOWED = N_(
    "Sorry, this bot talks only with people on its allowlist. Ask one of its admins to add you; your id is %(user)s"
)
TOO_FAST = N_("Too many messages in this chat; please wait %(wait)s and try again.")


def used_up(t: Texts, skill: str, limit: int, now: datetime) -> str:
    """The refusal of a use over the day's quota: when it resets, and who can raise it."""
    reset = next_utc_midnight(now)
    at = f"{reset:%Y-%m-%d %H:%M}"
    wait = describe_wait((reset - now).total_seconds(), t)
    if skill == "chat":
        if limit == 0:
            return t(
                "Your daily quota of chat messages is 0, so I cannot chat with you. "
                "Ask an admin of this bot if you need it."
            )
        return t.plural(
            "You have used your %(n)s chat message for today. Your quota resets at %(at)s UTC (in %(wait)s); "
            "try again then, or ask an admin of this bot for a larger quota.",
            "You have used all %(n)s of your chat messages for today. Your quota resets at %(at)s UTC "
            "(in %(wait)s); try again then, or ask an admin of this bot for a larger quota.",
            limit,
            at=at,
            wait=wait,
        )
    if limit == 0:
        return t(
            "Your daily quota of /%(command)s requests is 0, so you cannot use it. "
            "Ask an admin of this bot if you need it.",
            command=skill,
        )
    return t.plural(
        "You have used your %(n)s /%(command)s request for today. Your quota resets at %(at)s UTC "
        "(in %(wait)s); try again then, or ask an admin of this bot for a larger quota.",
        "You have used all %(n)s of your /%(command)s requests for today. Your quota resets at %(at)s UTC "
        "(in %(wait)s); try again then, or ask an admin of this bot for a larger quota.",
        limit,
        command=skill,
        at=at,
        wait=wait,
    )


def next_utc_midnight(now: datetime) -> datetime:
    """When today's quotas reset: the next 00:00 UTC."""
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    warned: bool = False


class TokenBuckets:
    """One token bucket per key: `per_minute` tokens a minute, holding at most `per_minute`.

    In memory, per process: with several processes behind a load balancer each holds its own
    buckets, so a chat may get up to N times the rate. Full (idle) buckets are dropped once
    the map grows, so it stays proportional to the chats that are busy right now.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, per_minute: int) -> tuple[bool, float, bool]:
        """Take a token: (allowed, seconds until the next token, first refusal since allowed)."""
        now = self._clock()
        rate = per_minute / 60.0
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self._max_keys:
                self._prune(now, per_minute)
            b = self._buckets[key] = _Bucket(float(per_minute), now)
        b.tokens = min(float(per_minute), b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            b.warned = False
            return True, 0.0, False
        first = not b.warned
        b.warned = True
        return False, (1.0 - b.tokens) / rate, first

    def _prune(self, now: float, per_minute: int) -> None:
        rate = per_minute / 60.0
        for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * rate >= per_minute]:
            del self._buckets[key]


class AccessControl:
    def __init__(
        self,
        access: AccessSettings,
        quotas: QuotasSettings,
        *,
        users: UserRepo,
        pairing: PairingRepo,
        quota_overrides: QuotaRepo,
        usage: UsageRepo,
        audit: AuditRepo,
        clock: Callable[[], datetime] = utcnow,
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._access = access
        self._quotas = quotas
        self._users = users
        self._pairing = pairing
        self._overrides = quota_overrides
        self._usage = usage
        self._audit = audit
        self._clock = clock
        self._buckets = buckets or TokenBuckets()
        self._refusal_replies = TokenBuckets()
        self._rules: dict[str, AccessRules] = {}
        self._allowed: dict[str, tuple[float, bool]] = {}

    def rules(self, channel: str) -> AccessRules:
        """The rules in force on one channel.

        The web chat is guarded at its door (it listens on loopback only, or asks for the bearer
        token), so whoever reaches it is the owner or someone they gave the token to: its
        private chats are open unless `[access.web] private` says otherwise.
        """
        rules = self._rules.get(channel)
        if rules is None:
            rules = self._access.for_channel(channel)
            if channel == "web" and (self._access.web is None or self._access.web.private is None):
                rules = rules.model_copy(update={"private": "open"})
            self._rules[channel] = rules
        return rules

    # --- who may talk -------------------------------------------------------------------

    async def admits(self, event: Event) -> bool:
        """Whether the policy lets this sender talk in this chat (admins are checked apart)."""
        rules = self.rules(event.channel)
        allow = set(rules.allow or ())
        chat = str(event.chat)
        if event.chat.kind == "group":
            if rules.groups != "allowlist":
                return True
            whole = f"{event.chat.channel}:group:{event.chat.chat_id}"
            return chat in allow or whole in allow
        if rules.private == "open" or event.sender.key in allow or chat in allow:
            return True
        return await self._approved(event.sender.key)

    async def _approved(self, user: str) -> bool:
        """Whether an admin let this user in (`/admin approve`); cached for a few seconds."""
        now = time.monotonic()
        hit = self._allowed.get(user)
        if hit is not None and now - hit[0] < APPROVED_TTL_S:
            return hit[1]
        approved = (await self._users.get(user)).allowed
        if len(self._allowed) >= 10_000:
            self._allowed.clear()
        self._allowed[user] = (now, approved)
        return approved

    def forget(self, user: str) -> None:
        """Read the user's standing again at their next message (after an approval here)."""
        self._allowed.pop(user, None)

    async def policy(self, call_next: Handler, event: Event, ctx: Context) -> None:
        if ctx.is_admin or await self.admits(event):
            await call_next(event, ctx)
            return
        rules = self.rules(event.channel)
        where = str(event.chat)
        if event.chat.kind == "group":
            # Silence in a group the bot is not meant for: answering every mention there is noise.
            log.info("event=refused reason=group_not_allowed chat=%s user=%s", where, ctx.user)
            await self._audit.record(ctx.user, "access", "refused", chat=where, detail="group not on the allowlist")
            return
        # Someone kept out who keeps writing gets a few answers a minute, not one per message.
        answer = self._refusal_replies.take(where, REFUSAL_REPLIES_PER_MINUTE)[0]
        if rules.private == "pairing":
            ttl = rules.pairing_ttl_s or 3600
            code = await self._pairing.issue(ctx.user, where, ttl)
            left = describe_wait((code.expires_at - self._clock()).total_seconds(), ctx.t)
            # Recorded before the answer goes: whoever reads it finds it in the audit.
            log.info("event=pairing_code user=%s chat=%s", ctx.user, where)
            await self._audit.record(ctx.user, "access", "pairing", chat=where, detail=f"code {code.code} issued")
            if answer:
                await ctx.reply(ctx.t(PAIRING, code=code.code, left=left, user=ctx.user))
            return
        log.info("event=refused reason=not_allowed chat=%s user=%s", where, ctx.user)
        await self._audit.record(ctx.user, "access", "refused", chat=where, detail="not on the allowlist")
        if answer:
            await ctx.reply(ctx.t(NOT_ALLOWED, user=ctx.user))

    async def housekeeping(self) -> None:
        """Drop expired pairing codes and usage older than `USAGE_KEPT_DAYS` (run hourly)."""
        before = (self._clock().astimezone(UTC).date() - timedelta(days=USAGE_KEPT_DAYS)).isoformat()
        codes = await self._pairing.forget_expired()
        days = await self._usage.forget_before(before)
        if codes or days:
            log.info("event=access_expired pairing_codes=%d usage_rows=%d", codes, days)

    # --- how fast -----------------------------------------------------------------------

    async def rate(self, call_next: Handler, event: Event, ctx: Context) -> None:
        per_minute = self.rules(event.channel).rate_per_minute
        if per_minute is None or ctx.is_admin:
            await call_next(event, ctx)
            return
        ok, wait, first = self._buckets.take(str(event.chat), per_minute)
        if ok:
            await call_next(event, ctx)
            return
        log.info("event=refused reason=rate chat=%s user=%s", event.chat, ctx.user)
        await self._audit.record(
            ctx.user, "rate", "refused", chat=str(event.chat), detail=f"over {per_minute} messages a minute"
        )
        if first:  # say it once per burst, not once per dropped message
            await ctx.reply(ctx.t(TOO_FAST, wait=describe_wait(wait, ctx.t)))

    # --- how much -----------------------------------------------------------------------

    async def limit_for(self, user: str, skill: str, *, is_admin: bool = False) -> int | None:
        """Uses per UTC day for a user: their own override, else (not for admins) the default.

        The default is `/admin quota default ...` when set, else `[quotas]`; None is unlimited.
        """
        own, default = await self._overrides.lookup(user, skill)
        if own is not None:
            return own
        if is_admin:
            return None
        if default is not None:
            return default
        value: int | None = getattr(self._quotas, skill, None)
        return value

    async def quota(self, call_next: Handler, event: Event, ctx: Context) -> None:
        """Count every use (for `/admin who`, and so a quota set at noon counts the morning);
        refuse one over the user's limit, saying when it resets."""
        skill = ctx.skill
        # A command without a prompt only gets its usage line: nothing to count.
        if skill not in SKILLS or (ctx.command is not None and not ctx.args.strip()):
            await call_next(event, ctx)
            return
        limit = await self.limit_for(ctx.user, skill, is_admin=ctx.is_admin)
        now = self._clock()
        day = now.astimezone(UTC).date().isoformat()
        if limit is None:
            await self._count_after(call_next, event, ctx, skill, day)
            return
        if await self._usage.take(ctx.user, skill, day, limit) is None:
            assert limit is not None
            log.info("event=refused reason=quota user=%s skill=%s limit=%d", ctx.user, skill, limit)
            await self._audit.record(
                ctx.user, f"quota {skill}", "refused", chat=str(event.chat), detail=f"{limit} per day used up"
            )
            await ctx.reply(used_up(ctx.t, skill, limit, now))
            return
        try:
            await call_next(event, ctx)
        except (Exception, asyncio.CancelledError):
            # The skill broke (the user got an apology) or the hub is stopping (the event is
            # handled again after restart): this use did not happen.
            await self._usage.give_back(ctx.user, skill, day)
            raise

    async def _count_after(self, call_next: Handler, event: Event, ctx: Context, skill: str, day: str) -> None:
        """With no limit there is nothing to refuse: the use is counted once the skill is done,
        not before it (the count's commit would otherwise stand before a chat's first token).
        A use that broke is not counted, as with a limit."""
        await call_next(event, ctx)
        try:
            await self._usage.take(ctx.user, skill, day, None)
        except Exception as exc:
            # The answer is out: not worth taking back, or sending twice, for an unlimited use.
            log.warning("event=usage_count_failed user=%s skill=%s error=%r", ctx.user, skill, exc)
