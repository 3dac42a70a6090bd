"""Storage on SQLite and on the local PostgreSQL: the same repositories, the same promises."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from harness import pg_database
from sqlalchemy import text, update

from hub.events import ChatRef, Event, Message, User
from hub.storage.cached import Cached
from hub.storage.chats import AuditRepo, ChatRepo, KeyValueRepo, UserRepo
from hub.storage.db import Database, utcnow
from hub.storage.inbox import InboxRepo
from hub.storage.media import MediaStore, MediaTooLarge
from hub.storage.migrate import HEAD, current_revision, migrate
from hub.storage.models import audit as audit_t
from hub.storage.models import chats as chats_t
from hub.storage.models import inbox as inbox_t
from hub.storage.models import outbox as outbox_t
from hub.storage.outbox import NewMessage, OutboxRepo
from hub.storage.retention import prune


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
        await migrate(database)
        await database.start()
        yield database
        await database.close()
    else:
        async with pg_database() as url:
            database = Database(url)
            await migrate(database)
            await database.start()
            yield database
            await database.close()


def _event(i: int | str, chat: str = "c1") -> Event:
    return Event(
        id=str(i),
        channel="fake",
        chat=ChatRef("fake", "private", chat),
        sender=User("fake", "u1"),
        message=Message.of(f"m{i}"),
    )


async def test_migration_reaches_head_and_is_idempotent(db: Database) -> None:
    assert await current_revision(db) == HEAD
    assert await migrate(db) is False


async def test_inbox_deduplicates_on_channel_and_event_id(db: Database) -> None:
    inbox = InboxRepo(db, "h1")
    first = await asyncio.gather(*(inbox.store(_event(i)) for i in range(20)))
    assert all(r is not None for r in first)
    again = await asyncio.gather(*(inbox.store(_event(i)) for i in range(20)), inbox.store(_event(5)))
    assert again == [None] * 21
    # Duplicates inside one batch: exactly one of them is new.
    both = await asyncio.gather(inbox.store(_event("x")), inbox.store(_event("x")))
    assert sorted(both, key=lambda v: v is None)[1] is None and any(both)
    assert await inbox.backlog() == 21


async def test_inbox_stalled_events_are_claimed_after_the_lease(db: Database) -> None:
    a = InboxRepo(db, "a", lease_s=0.2)
    b = InboxRepo(db, "b", lease_s=30)
    row = await a.store(_event(1))
    assert row is not None
    assert await b.claim_stalled() == []  # a's lease still holds
    await asyncio.sleep(0.3)
    claimed = await b.claim_stalled()
    # A claim is not an attempt: only a handling that starts counts (note_attempt).
    assert [r.event.id for r in claimed] == ["1"] and claimed[0].attempts == 0
    assert await a.claim_stalled() == []  # b holds it now
    await b.mark_done(claimed[0].id)
    assert await b.backlog() == 0


async def test_outbox_idempotency_key_and_claims(db: Database) -> None:
    repo = OutboxRepo(db, "h1")
    target = ChatRef("fake", "group", "g1")
    ids = await asyncio.gather(
        *(repo.enqueue(NewMessage(target, Message.of(f"t{i}"), idempotency_key=f"k{i % 3}")) for i in range(9))
    )
    assert len(set(ids)) == 3
    plain = await repo.enqueue(NewMessage(target, Message.of("no key")))
    assert plain not in ids
    other = OutboxRepo(db, "h2")
    first = await repo.claim_due(10)
    assert len(first) == 4
    assert await other.claim_due(10) == []  # leased
    assert first[0].message.text == "t0" and first[0].target == target
    await repo.mark_sent(first[0].id, ["m1"])
    await repo.mark_sent(first[0].id, ["m2"])  # a second mark changes nothing
    await repo.mark_retry(first[1].id, attempts=1, next_at=utcnow() + timedelta(hours=1), error="429")
    await repo.mark_failed(first[2].id, attempts=10, error="gone")
    rows = {r["id"]: r for r in await repo.all_rows()}
    assert rows[first[0].id]["status"] == "sent" and rows[first[0].id]["sent_ids"] == ["m1"]
    assert rows[first[1].id]["status"] == "pending" and rows[first[1].id]["last_error"] == "429"
    assert rows[first[2].id]["status"] == "failed"
    assert await repo.backlog() == 2


async def test_outbox_claims_do_not_overlap_between_holders(db: Database) -> None:
    # One chat per message: a chat being sent to is not claimed again (see the test below).
    repos = [OutboxRepo(db, f"h{i}") for i in range(4)]
    await asyncio.gather(
        *(repos[0].enqueue(NewMessage(ChatRef("fake", "private", f"p{i}"), Message.of(str(i)))) for i in range(200))
    )
    claimed = await asyncio.gather(*(r.claim_due(30) for r in repos for _ in range(3)))
    ids = [i.id for batch in claimed for i in batch]
    assert len(ids) == len(set(ids))
    assert len(ids) == 200 if db.is_sqlite else len(ids) <= 200


async def test_chats_users_audit_kv(db: Database) -> None:
    chats, users, audit, kv = ChatRepo(db), UserRepo(db), AuditRepo(db), KeyValueRepo(db)
    assert (await chats.get("fake:group:1")).skills_off == frozenset()
    await chats.set_skill("fake:group:1", "video", on=False)
    await chats.update("fake:group:1", persona="Mei")
    got = await chats.get("fake:group:1")
    assert got.skills_off == {"video"} and got.persona == "Mei"
    assert (await chats.get("fake:group:2")).skills_off == frozenset()
    await users.set("telegram:1", banned=True)
    await users.set("telegram:2", is_admin=True)
    assert await users.banned() == {"telegram:1"}
    assert await users.admins() == ["telegram:2"]
    await audit.record("telegram:3", "admin ban", "refused", chat="telegram:private:3", detail="telegram:1")
    (entry,) = await audit.recent(5)
    assert (entry.actor, entry.outcome) == ("telegram:3", "refused")
    assert entry.at.tzinfo is not None
    await kv.set("default_model", "qwen")
    await kv.set("default_model", "gpt")
    assert await kv.get("default_model") == "gpt"


async def test_media_store_caps_size_and_expires(db: Database, tmp_path: Path) -> None:
    store = MediaStore(db, tmp_path / "media", retention_days=7)
    saved = await store.save_bytes(b"hello", name="a.txt")
    assert (await store.get(saved.id)) is not None and saved.mime == "text/plain"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    with pytest.raises(MediaTooLarge):
        await store.save_stream(chunks(), max_bytes=5000)
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == [saved.id]
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE media SET created_at = :t"), {"t": (utcnow() - timedelta(days=8)).replace(tzinfo=None)}
        )
    assert await store.expire() == 1
    assert await store.get(saved.id) is None
    assert await store.get("../../etc/passwd") is None


async def test_outbox_release_all_makes_a_dead_runs_claims_available_at_once(db: Database) -> None:
    dead = OutboxRepo(db, "dead-run")
    await dead.enqueue(NewMessage(ChatRef("fake", "private", "p"), Message.of("x")))
    assert len(await dead.claim_due(10)) == 1
    restarted = OutboxRepo(db, "new-run")
    assert await restarted.claim_due(10) == []  # still leased by the dead run
    await restarted.release_all()
    assert [i.message.text for i in await restarted.claim_due(10)] == ["x"]


async def test_waiting_messages_are_released_per_chat_and_once(db: Database) -> None:
    repo = OutboxRepo(db, "run")
    p, q, r = (ChatRef("fake", "private", c) for c in "pqr")
    ids = {}
    for target, body in ((p, "p1"), (q, "q1"), (r, "r1")):
        ids[body] = await repo.enqueue(NewMessage(target, Message.of(body)))
    assert len(await repo.claim_due(10)) == 3
    for body in ("p1", "q1", "r1"):
        assert await repo.mark_waiting(ids[body], error="nothing to answer")
    # Released together (one batch of the writer): each chat gets its own, a chat named twice
    # gets its rows once, and a chat that wrote nothing keeps its message waiting.
    got = await asyncio.gather(*(repo.release_waiting(str(t)) for t in (p, q, p)))
    assert sorted(map(sorted, got)) == [[], [ids["p1"]], [ids["q1"]]]
    status = {row["id"]: row["status"] for row in await repo.all_rows()}
    assert (status[ids["p1"]], status[ids["q1"]], status[ids["r1"]]) == ("pending", "pending", "waiting")
    assert sorted(i.message.text for i in await repo.claim_due(10)) == ["p1", "q1"]


async def test_outbox_updates_are_fenced_on_the_holder(db: Database) -> None:
    slow = OutboxRepo(db, "slow", lease_s=0.2)
    fast = OutboxRepo(db, "fast", lease_s=30)
    target = ChatRef("fake", "private", "p")
    await slow.enqueue(NewMessage(target, Message.of("a")))
    (mine,) = await slow.claim_due(10)
    await asyncio.sleep(0.3)  # slow stalls past its lease; fast takes the message over
    (theirs,) = await fast.claim_due(10)
    assert theirs.id == mine.id
    # The process that lost its lease changes nothing any more.
    assert await slow.mark_retry(mine.id, attempts=1, next_at=utcnow(), error="late") is False
    assert await slow.mark_failed(mine.id, attempts=9, error="late") is False
    await slow.set_progress(mine.id, 3)
    await slow.renew([mine.id])
    await slow.mark_sent(mine.id, ["late"])
    (row,) = await fast.all_rows()
    assert (row["holder"], row["status"], row["progress"], row["last_error"]) == ("fast", "pending", 0, None)
    await fast.mark_sent(theirs.id, ["m1"])
    (row,) = await fast.all_rows()
    assert (row["status"], row["sent_ids"]) == ("sent", ["m1"])


async def test_outbox_claims_keep_one_sender_and_the_order_per_chat(db: Database) -> None:
    a, b = OutboxRepo(db, "a"), OutboxRepo(db, "b")
    p, q = ChatRef("fake", "private", "p"), ChatRef("fake", "private", "q")
    for body in ("p1", "p2"):
        await a.enqueue(NewMessage(p, Message.of(body)))
    first = await a.claim_due(1)
    assert [i.message.text for i in first] == ["p1"]
    await a.enqueue(NewMessage(q, Message.of("q1")))
    # p has a message being sent: neither this process nor another claims p's next one.
    assert [i.message.text for i in await b.claim_due(10)] == ["q1"]
    assert await a.claim_due(10) == []
    # p1 failed and waits for its retry: p2 waits behind it rather than overtake it.
    await a.mark_retry(first[0].id, attempts=1, next_at=utcnow() + timedelta(hours=1), error="500")
    assert await b.claim_due(10) == []
    await a.enqueue(NewMessage(ChatRef("fake", "private", "r"), Message.of("r1")))
    assert [i.message.text for i in await b.claim_due(10)] == ["r1"]


@pytest.mark.parametrize("skew_h", [-1, 1])
async def test_leases_are_timed_by_the_database_clock(
    db: Database, monkeypatch: pytest.MonkeyPatch, skew_h: int
) -> None:
    """A host whose clock is an hour off neither loses its lease at once nor steals a live one."""
    steady_in, steady_out = InboxRepo(db, "steady"), OutboxRepo(db, "steady")
    skewed_in, skewed_out = InboxRepo(db, "skewed"), OutboxRepo(db, "skewed")
    real = utcnow

    def skewed() -> datetime:
        return real() + timedelta(hours=skew_h)

    target = ChatRef("fake", "private", "p")
    if skew_h < 0:
        # The skewed host takes leases: they must not be over before they start.
        for module in ("hub.storage.inbox", "hub.storage.outbox", "hub.storage.db"):
            monkeypatch.setattr(f"{module}.utcnow", skewed, raising=False)
        await skewed_in.store(_event(1))
        await skewed_out.enqueue(NewMessage(target, Message.of("x")))
        assert len(await skewed_out.claim_due(10)) == 1
        monkeypatch.undo()
        assert await steady_in.claim_stalled() == []
        assert await steady_out.claim_due(10) == []
    else:
        # The skewed host checks leases: a live one is not expired to it.
        await steady_in.store(_event(1))
        await steady_out.enqueue(NewMessage(target, Message.of("x")))
        assert len(await steady_out.claim_due(10)) == 1
        for module in ("hub.storage.inbox", "hub.storage.outbox", "hub.storage.db"):
            monkeypatch.setattr(f"{module}.utcnow", skewed, raising=False)
        assert await skewed_in.claim_stalled() == []
        assert await skewed_out.claim_due(10) == []
    # The deadline read back is UTC-aware and about a lease from the database's now.
    (row,) = await steady_out.all_rows()
    assert row["lease_until"].tzinfo is not None
    assert timedelta(seconds=20) < row["lease_until"] - real() < timedelta(seconds=31)


async def test_old_handled_rows_are_pruned_and_the_dedupe_window_kept(db: Database) -> None:
    inbox, outbox = InboxRepo(db, "h1"), OutboxRepo(db, "h1")
    audit = AuditRepo(db)
    ids: dict[str, int] = {}
    for i in range(4):
        await inbox.store(_event(i))
        ids[str(i)] = await outbox.enqueue(NewMessage(ChatRef("fake", "private", f"p{i}"), Message.of(str(i))))
    for claimed in await inbox.claim_stalled(take_all=True):
        if claimed.event.id != "3":
            await inbox.mark_done(claimed.id)
    for item in await outbox.claim_due(10):
        if item.message.text != "3":
            await outbox.mark_sent(item.id)
    await audit.record("fake:u1", "admin ban", "ok")
    days = {"0": 40, "1": 6, "2": 1, "3": 40}
    async with db.engine.begin() as conn:
        for key, age in days.items():
            at = utcnow() - timedelta(days=age)
            await conn.execute(update(inbox_t).where(inbox_t.c.event_id == key).values(handled_at=at, received_at=at))
            await conn.execute(update(outbox_t).where(outbox_t.c.id == ids[key]).values(sent_at=at, created_at=at))
        await conn.execute(update(audit_t).values(at=utcnow() - timedelta(days=40)))
    counts = await prune(db, retention_days=5)
    assert counts == {"inbox": 1, "outbox": 2, "web_events": 0, "audit": 1}
    left = await inbox.claim_stalled(take_all=True)
    assert [r.event.id for r in left] == ["3"]  # pending: never pruned, whatever its age
    # Within the 7-day dedupe window the event is still known: a retry stays a duplicate.
    assert await inbox.store(_event(1)) is None and await inbox.store(_event(2)) is None
    assert [r["status"] for r in await outbox.all_rows()] == ["sent", "pending"]
    if not db.is_sqlite:
        # Another process of the cluster pruning now: this one skips its round.
        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": 0x7072756E65})
            try:
                assert await prune(db, retention_days=5) is None
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": 0x7072756E65})


async def test_pruning_goes_in_batches_and_takes_old_failures_but_never_a_waiting_message(db: Database) -> None:
    outbox = OutboxRepo(db, "h1")
    ids = [await outbox.enqueue(NewMessage(ChatRef("fake", "private", f"b{i}"), Message.of(str(i)))) for i in range(7)]
    old = utcnow() - timedelta(days=40)
    async with db.engine.begin() as conn:
        await conn.execute(update(outbox_t).where(outbox_t.c.id.in_(ids[:5])).values(status="sent", sent_at=old))
        await conn.execute(update(outbox_t).where(outbox_t.c.id == ids[5]).values(status="failed", created_at=old))
        await conn.execute(update(outbox_t).where(outbox_t.c.id == ids[6]).values(status="waiting", created_at=old))
    counts = await prune(db, retention_days=5, batch=2)
    assert counts is not None and counts["outbox"] == 6
    assert [r["status"] for r in await outbox.all_rows()] == ["waiting"]


async def test_database_errors_never_carry_the_statement_parameters(tmp_path: Path) -> None:
    from sqlalchemy import text

    from hub.storage.db import Database

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT NOT NULL UNIQUE)"))
            await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": "a whole private message"})
        with pytest.raises(Exception) as caught:
            async with db.engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": "a whole private message"})
        assert "UNIQUE" in str(caught.value)
        assert "a whole private message" not in str(caught.value)
    finally:
        await db.close()


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run the tasks started so far until the condition holds."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_a_cached_value_is_reloaded_ahead_of_its_expiry() -> None:
    now = 0.0
    loads: list[asyncio.Future[int]] = []

    def load() -> asyncio.Future[int]:
        loads.append(asyncio.get_running_loop().create_future())
        return loads[-1]

    cached = Cached(load, 2.0, clock=lambda: now)
    first = asyncio.ensure_future(cached.get())
    second = asyncio.ensure_future(cached.get())
    await until(lambda: len(loads) == 1)
    loads[0].set_result(1)
    assert await first == 1 and await second == 1 and len(loads) == 1  # one read for both
    now = 0.9
    assert await cached.get() == 1
    now = 1.0  # half the TTL: answered at once, read again behind it
    assert await cached.get() == 1
    await until(lambda: len(loads) == 2)
    assert await cached.get() == 1 and len(loads) == 2  # one reload at a time
    loads[1].set_result(2)
    await until(lambda: cached._loading is None)
    assert await cached.get() == 2
    now = 3.1  # that reload began at 1.0: past the TTL now, so the next use waits
    waiting = asyncio.ensure_future(cached.get())
    await until(lambda: len(loads) == 3)
    assert not waiting.done()
    # A change made here meanwhile: what the read in flight saw is not kept.
    cached.invalidate()
    loads[2].set_result(3)
    assert await waiting == 3
    again = asyncio.ensure_future(cached.get())
    await until(lambda: len(loads) == 4)
    loads[3].set_result(4)
    assert await again == 4


async def test_a_failed_reload_is_tried_again() -> None:
    now = 0.0
    results: list[int | Exception] = [1, RuntimeError("database busy"), 2]

    async def load() -> int:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    cached = Cached(load, 2.0, clock=lambda: now)
    assert await cached.get() == 1
    now = 1.5
    assert await cached.get() == 1  # the reload behind it fails
    await until(lambda: len(results) == 1 and cached._loading is None)
    assert await cached.get() == 1  # and is started again
    await until(lambda: not results and cached._loading is None)
    assert await cached.get() == 2


async def test_chat_settings_are_read_again_behind_a_half_expired_entry(db: Database) -> None:
    chats = ChatRepo(db, ttl_s=2.0)
    await chats.update("fake:group:1", persona="Mei")
    assert (await chats.get("fake:group:1")).persona == "Mei"
    async with db.engine.begin() as conn:  # another process's change
        await conn.execute(update(chats_t).where(chats_t.c.ref == "fake:group:1").values(persona="Ann"))
    at, value = chats._cache["fake:group:1"]
    chats._cache["fake:group:1"] = (at - 1.5, value)
    assert (await chats.get("fake:group:1")).persona == "Mei"  # not waited for
    await asyncio.gather(*chats._reloading.values())
    assert (await chats.get("fake:group:1")).persona == "Ann"
