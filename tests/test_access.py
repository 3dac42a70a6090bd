"""Who may talk (open / allowlist / pairing, groups), how fast (token bucket), how much (quotas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from harness import pg_database
from sqlalchemy import update
from test_admin import TOKEN_ADMIN, VIDEO, WebEnv, started

from hub.durations import describe_wait, within
from hub.events import ChatRef, Event, Message, Text, User
from hub.i18n import texts
from hub.routing.access import AccessControl, TokenBuckets, next_utc_midnight
from hub.routing.commands import CommandObject
from hub.routing.context import Context, ReplyStream
from hub.settings import AccessSettings, QuotasSettings
from hub.storage.admin import PairingRepo, QuotaRepo, UsageRepo
from hub.storage.chats import AuditRepo, ChatRepo, ChatSettings, UserRepo
from hub.storage.db import Database
from hub.storage.inbox import InboxRepo
from hub.storage.jobs import JobRepo
from hub.storage.migrate import migrate
from hub.storage.models import pairing

# --- pieces --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now,reset",
    [
        (datetime(2025, 3, 1, 13, 5, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC)),
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
        (datetime(2024, 2, 28, 0, 0, tzinfo=UTC), datetime(2024, 2, 29, tzinfo=UTC)),
        # 01:30 in UTC+8 is still the previous UTC day: the reset is UTC midnight.
        (datetime(2025, 3, 2, 1, 30, tzinfo=timezone(timedelta(hours=8))), datetime(2025, 3, 2, tzinfo=UTC)),
    ],
)
def test_quotas_reset_at_the_next_utc_midnight(now: datetime, reset: datetime) -> None:
    got = next_utc_midnight(now)
    assert got == reset and got.tzinfo == UTC
    assert timedelta(0) < got - now <= timedelta(days=1)


@pytest.mark.parametrize(
    "seconds,en,zh",
    [
        (0.2, "1 second", "1 秒"),
        (40, "40 seconds", "40 秒"),
        (61, "2 minutes", "2 分钟"),
        (3600, "1 hour", "1 小时"),
        (3660, "1 hour 1 minute", "1 小时 1 分钟"),
        (18720, "5 hours 12 minutes", "5 小时 12 分钟"),
        (2 * 86400, "2 days", "2 天"),
    ],
)
def test_waits_read_like_a_person_would_say_them(seconds: float, en: str, zh: str) -> None:
    assert describe_wait(seconds, texts("en")) == en
    assert describe_wait(seconds, texts("zh")) == zh
    assert within(seconds, texts("en")) == f"in {en}"
    assert within(seconds, texts("zh")) == f"{zh}后"


def test_token_bucket_allows_a_burst_then_the_rate_and_warns_once() -> None:
    now = [1000.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    assert [buckets.take("c1", 3)[0] for _ in range(3)] == [True, True, True]
    ok, wait, first = buckets.take("c1", 3)
    assert (ok, first) == (False, True) and wait == pytest.approx(20.0)
    assert buckets.take("c1", 3)[2] is False  # refused again, but not announced again
    assert buckets.take("c2", 3)[0] is True  # another chat has its own bucket
    now[0] += 20.0
    assert buckets.take("c1", 3)[0] is True
    assert buckets.take("c1", 3) == (False, pytest.approx(20.0), True)


def test_idle_buckets_are_dropped_when_the_map_is_full() -> None:
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0], max_keys=3)
    for key in ("a", "b", "c"):
        buckets.take(key, 60)
    now[0] += 5.0  # every bucket is full again
    buckets.take("d", 60)
    assert set(buckets._buckets) == {"d"}


# --- quotas, against the real tables, with a clock of our own --------------------------------------


@dataclass
class Replies:
    sent: list[str] = field(default_factory=list)

    async def reply(self, message: Message, *, quote: bool = True) -> None:
        self.sent.append(message.text)

    def stream(self) -> ReplyStream:
        raise AssertionError("not used")

    async def action(self, kind: str = "typing") -> None:
        pass


def context(user: str, skill: str, args: str = "a cat", *, admin: bool = False) -> Context:
    event = Event(
        id="e1",
        channel="web",
        chat=ChatRef("web", "private", user),
        sender=User("web", user),
        message=Message((Text(f"/{skill} {args}"),)),
    )
    return Context(event, CommandObject(skill, args), ChatSettings(str(event.chat)), admin, Replies(), skill)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    await migrate(database)
    yield database
    await database.close()


def control(db: Database, clock: Any, overrides: QuotaRepo | None = None, **quotas: int) -> AccessControl:
    return AccessControl(
        AccessSettings(),
        QuotasSettings(**quotas),
        users=UserRepo(db),
        pairing=PairingRepo(db),
        quota_overrides=overrides or QuotaRepo(db),
        usage=UsageRepo(db),
        audit=AuditRepo(db),
        clock=clock,
    )


async def run(access: AccessControl, ctx: Context) -> bool:
    """Through the quota middleware; True when the skill ran."""
    ran = []

    async def skill(event: Event, c: Context) -> None:
        ran.append(True)

    await access.quota(skill, ctx.event, ctx)
    return bool(ran)


async def test_a_quota_resets_at_utc_midnight(db: Database) -> None:
    now = [datetime(2025, 6, 1, 21, 30, tzinfo=UTC)]
    access = control(db, lambda: now[0], video=2)
    assert [await run(access, context("u", "video")) for _ in range(2)] == [True, True]
    ctx = context("u", "video")
    assert await run(access, ctx) is False
    said = ctx.replier.sent[-1]  # type: ignore[attr-defined]
    assert "all 2 of your /video requests" in said
    assert "resets at 2025-06-02 00:00 UTC (in 2 hours 30 minutes)" in said
    assert (await AuditRepo(db).recent(1))[0].action == "quota video"
    now[0] = datetime(2025, 6, 2, 0, 0, 1, tzinfo=UTC)
    assert await run(access, context("u", "video")) is True
    # Another skill and another user were never limited by it.
    assert await run(access, context("u", "image")) is True
    assert await run(access, context("v", "video")) is True


async def test_overrides_a_users_own_then_default_then_the_configuration(db: Database) -> None:
    repo = QuotaRepo(db)
    access = control(db, lambda: datetime.now(UTC), repo, video=5)
    assert await access.limit_for("web:a", "video") == 5
    await repo.set("default", "video", 3)
    assert await access.limit_for("web:a", "video") == 3
    await repo.set("web:a", "video", 0)
    assert await access.limit_for("web:a", "video") == 0
    assert await access.limit_for("web:b", "video") == 3
    # Admins are held only to a limit set for them by name.
    assert await access.limit_for("web:boss", "video", is_admin=True) is None
    await repo.set("web:boss", "video", 1)
    assert await access.limit_for("web:boss", "video", is_admin=True) == 1
    await repo.set("default", "video", None)
    assert await access.limit_for("web:b", "video") == 5


async def test_a_use_that_broke_is_given_back(db: Database) -> None:
    access = control(db, lambda: datetime.now(UTC), image=1)

    async def broken(event: Event, c: Context) -> None:
        raise RuntimeError("provider down")

    ctx = context("u", "image")
    with pytest.raises(RuntimeError):
        await access.quota(broken, ctx.event, ctx)
    assert await UsageRepo(db).count("u", "image", datetime.now(UTC).date().isoformat()) == 0
    assert await run(access, context("u", "image")) is True
    assert await run(access, context("u", "image")) is False


async def test_an_unlimited_use_is_counted_once_the_skill_is_done(db: Database) -> None:
    access = control(db, lambda: datetime.now(UTC))
    usage = UsageRepo(db)
    day = datetime.now(UTC).date().isoformat()
    seen: list[int] = []

    async def chat(event: Event, c: Context) -> None:
        seen.append(await usage.count(c.user, "chat", day))

    async def broken(event: Event, c: Context) -> None:
        raise RuntimeError("model down")

    ctx = context("u", "chat")
    await access.quota(chat, ctx.event, ctx)
    with pytest.raises(RuntimeError):
        await access.quota(broken, ctx.event, ctx)
    await access.quota(chat, ctx.event, ctx)
    # Nothing stood before the skill; a use that broke did not count.
    assert seen == [0, 1] and await usage.count(ctx.user, "chat", day) == 2


async def test_housekeeping_keeps_five_weeks_of_usage(db: Database) -> None:
    usage = UsageRepo(db)
    for day in ("2025-04-26", "2025-04-27", "2025-06-01"):
        await usage.take("u", "chat", day, None)
    access = control(db, lambda: datetime(2025, 6, 1, 12, tzinfo=UTC))
    await access.housekeeping()
    assert [d for d, _, _ in await usage.for_user("u", "2000-01-01")] == ["2025-06-01", "2025-04-27"]


async def test_a_command_without_a_prompt_is_not_counted(db: Database) -> None:
    access = control(db, lambda: datetime.now(UTC), video=1)
    assert await run(access, context("u", "video", "")) is True
    assert await run(access, context("u", "video", "")) is True
    assert await run(access, context("u", "video")) is True
    assert await run(access, context("u", "video")) is False


async def _race_for_the_last_uses(db: Database) -> None:
    usage = UsageRepo(db)
    results = await asyncio.gather(*(usage.take("web:u", "video", "2025-06-01", 3) for _ in range(12)))
    assert sorted(r for r in results if r is not None) == [1, 2, 3]
    assert results.count(None) == 9
    assert await usage.take("web:v", "video", "2025-06-01", 0) is None  # a limit of 0: none at all
    assert await usage.take("web:v", "video", "2025-06-01", None) == 1  # no limit: still counted


async def test_concurrent_uses_never_pass_the_limit_sqlite(db: Database) -> None:
    await _race_for_the_last_uses(db)


@pytest.mark.postgres
async def test_concurrent_uses_never_pass_the_limit_postgresql() -> None:
    async with pg_database() as url:
        database = Database(url)
        try:
            await migrate(database)
            await _race_for_the_last_uses(database)
        finally:
            await database.close()


async def test_pairing_codes_are_reused_until_they_expire_and_approved_once(db: Database) -> None:
    await _pairing_codes(db)


@pytest.mark.postgres
async def test_the_admin_tables_on_postgresql() -> None:
    async with pg_database() as url:
        database = Database(url)
        try:
            await migrate(database)
            await _pairing_codes(database)
            repo = QuotaRepo(database)
            await repo.set("telegram:1", "video", 2)
            await repo.set("default", "video", 5)
            assert await repo.lookup("telegram:1", "video") == (2, 5)
            usage = UsageRepo(database)
            assert await usage.take("telegram:1", "video", "2025-06-01", 2) == 1
            await usage.give_back("telegram:1", "video", "2025-06-01")
            assert await usage.count("telegram:1", "video", "2025-06-01") == 0
            assert await usage.take("telegram:1", "chat", "2025-06-02", None) == 1
            assert await usage.for_user("telegram:1", "2025-06-01") == [("2025-06-02", "chat", 1)]
            await ChatRepo(database).update("telegram:group:-100", persona=None)
            await ChatRepo(database).mark_unreachable("telegram:group:-200", "kicked")
            assert await ChatRepo(database).known() == ["telegram:group:-100"]
            since = datetime.now(UTC) - timedelta(hours=1)
            assert await InboxRepo(database, "test").failures_since(since) == 0
            assert await JobRepo(database, "test").failures_since(since) == 0
        finally:
            await database.close()


async def _pairing_codes(db: Database) -> None:
    repo = PairingRepo(db)
    first = await repo.issue("fake:s", "fake:private:s", 3600)
    assert len(first.code) == 6 and first.code.isalnum() and first.code.isupper()
    assert (await repo.issue("fake:s", "fake:private:s", 3600)).code == first.code
    async with db.engine.begin() as conn:
        await conn.execute(update(pairing).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert (await repo.approve(first.code, "web:admin"))[0] == "expired"
    second = await repo.issue("fake:s", "fake:private:s", 3600)
    assert second.code != first.code
    outcome, found = await repo.approve(second.code.lower(), "web:admin")
    assert outcome == "approved" and found is not None and found.user == "fake:s"
    assert (await repo.approve(second.code, "web:other"))[0] == "already"
    assert (await repo.get(second.code)).approved_by == "web:admin"  # type: ignore[union-attr]
    # Housekeeping drops the expired code, keeps the approved one.
    assert await repo.forget_expired() == 1
    assert await repo.get(first.code) is None and await repo.get(second.code) is not None


# --- the policy, end to end on the test platform -----------------------------------------------------


@pytest.fixture
async def allowlisted(tmp_path: Path) -> AsyncIterator[WebEnv]:
    toml = """
admins = ["fake:boss"]
[access]
private = "allowlist"
groups = "allowlist"
allow = ["fake:friend", "fake:private:room", "fake:group:g1"]
"""
    async with started(tmp_path, toml) as e:
        yield e


async def test_allowlist_lets_in_listed_users_and_chats_and_refuses_others(allowlisted: WebEnv) -> None:
    env = allowlisted
    assert "Commands:" in await env.fake("friend", "/help")
    assert "Commands:" in await env.fake("anyone", "/help", chat="room")
    refused = await env.fake("stranger", "/help")
    assert "only with people on its allowlist" in refused and "fake:stranger" in refused
    entry = (await env.hub.audit.recent(1))[0]
    assert (entry.actor, entry.chat, entry.action, entry.outcome) == (
        "fake:stranger",
        "fake:private:stranger",
        "access",
        "refused",
    )
    # The owner is never locked out.
    assert "Commands:" in await env.fake("boss", "/help")


async def test_someone_kept_out_who_keeps_writing_gets_a_few_answers_a_minute(allowlisted: WebEnv) -> None:
    answers = [await allowlisted.fake("pest", f"hello {n}") for n in range(7)]
    assert ["allowlist" in a for a in answers] == [True] * 5 + [False] * 2
    assert answers[5:] == ["", ""]
    refused = [e for e in await allowlisted.hub.audit.recent(20) if e.actor == "fake:pest"]
    assert len(refused) == 7  # every refusal is audited, answered or not


async def test_group_allowlist_is_silent_elsewhere_but_admins_pass(allowlisted: WebEnv) -> None:
    env = allowlisted
    assert "Commands:" in await env.fake("member", "/help", chat="g1", group=True)
    assert await env.fake("member", "/help", chat="g2", group=True) == ""
    entry = (await env.hub.audit.recent(1))[0]
    assert (entry.chat, entry.outcome, entry.detail) == ("fake:group:g2", "refused", "group not on the allowlist")
    assert "Commands:" in await env.fake("boss", "/help", chat="g2", group=True)


async def test_a_thread_of_an_allowed_group_is_allowed(allowlisted: WebEnv) -> None:
    access = allowlisted.hub.access
    event = Event("t1", "fake", ChatRef("fake", "group", "g1", "42"), User("fake", "m"), Message.of("/help"))
    assert await access.admits(event)


async def test_the_web_chat_stays_open_under_a_global_policy(allowlisted: WebEnv) -> None:
    # Nobody but the machine's owner (loopback) or a token holder reaches the web chat.
    assert "Commands:" in await allowlisted.web("owner", "/help")


async def test_access_web_can_close_the_web_chat_too(tmp_path: Path) -> None:
    toml = """
[access.web]
private = "allowlist"
allow = ["web:friend"]
"""
    async with started(tmp_path, toml) as env:
        assert "allowlist" in await env.web("someone", "/help")
        assert "Commands:" in await env.web("friend", "/help")
    # An admin (by the web token) passes the allowlist.
    async with started(tmp_path, toml + TOKEN_ADMIN) as env:
        assert "Commands:" in await env.web("admin1", "/help")


async def test_pairing_code_lifetime_comes_from_the_configuration(tmp_path: Path) -> None:
    toml = """
[access]
private = "pairing"
[access.web]
private = "pairing"
pairing_ttl_s = 120
"""
    async with started(tmp_path, toml) as env:
        assert "(valid for 2 minutes)" in await env.web("someone", "hello")
        assert "(valid for 1 hour)" in await env.fake("someone", "hello")


async def test_rate_limit_per_chat_says_so_once_and_spares_admins_and_other_chats(tmp_path: Path) -> None:
    toml = """
admins = ["fake:boss"]
[access]
rate_per_minute = 2
"""
    async with started(tmp_path, toml) as env:
        assert "Commands:" in await env.fake("a", "/help", chat="g1", group=True)
        assert "Commands:" in await env.fake("b", "/help", chat="g1", group=True)
        assert "Too many messages in this chat; please wait 30 s" in await env.fake("a", "/help", chat="g1", group=True)
        assert await env.fake("b", "/help", chat="g1", group=True) == ""
        assert "Commands:" in await env.fake("boss", "/help", chat="g1", group=True)
        assert "Commands:" in await env.fake("a", "/help", chat="g2", group=True)
        refusals = [e for e in await env.hub.audit.recent(10) if e.action == "rate"]
        assert len(refusals) == 2 and {e.chat for e in refusals} == {"fake:group:g1"}


async def test_configured_quota_applies_to_users_and_not_to_admins(tmp_path: Path) -> None:
    toml = f"""
{VIDEO}
[quotas]
video = 1
{TOKEN_ADMIN}"""
    async with started(tmp_path, toml) as env:
        assert "queued as #" in (await env.video("u1", "one [never]"))[0]
        refused = (await env.video("u1", "two [never]"))[0]
        assert "used your 1 /video request for today" in refused and "00:00 UTC" in refused
        assert "queued as #" in (await env.video("u2", "one [never]"))[0]
        for n in range(3):
            assert "queued as #" in (await env.video("admin1", f"mine {n} [never]"))[0]
        # Only one job was made for u1.
        assert len(await env.hub.jobs.list(owner=env.user("u1"))) == 1
