"""The background loops keep going when the database fails under them (issue 11: 10, 11, 13)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fakechan import FakeChannel
from harness import FakeServer, eventually, make_settings, running_hub
from sqlalchemy import update
from test_spine_e2e import post_event

from hub.channels.base import Channel, ChannelLimits, SendRequest, SendResult
from hub.delivery import Outbox
from hub.events import ChatRef, Event, Message, User
from hub.inbound import UNHANDLED_TEXT, Dispatcher, tell_unhandled
from hub.metrics import Metrics
from hub.replies import EventReplier
from hub.routing.context import Replier
from hub.storage.chats import ChatRepo
from hub.storage.db import Database, utcnow
from hub.storage.inbox import InboxRepo
from hub.storage.media import MediaStore
from hub.storage.migrate import migrate
from hub.storage.models import inbox as inbox_table
from hub.storage.outbox import NewMessage, OutboxRepo


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    await migrate(database)
    await database.start()
    yield database
    await database.close()


def _event(i: int, chat: str = "c1") -> Event:
    return Event(
        id=f"e{i}",
        channel="fake",
        chat=ChatRef("fake", "private", chat),
        sender=User("fake", "u1"),
        message=Message.of(f"m{i}"),
    )


class FailingInbox(InboxRepo):
    """An inbox whose `mark_done` raises (a busy or full disk) for the events in `fail_ids`."""

    def __init__(self, db: Database, holder: str, lease_s: float) -> None:
        super().__init__(db, holder, lease_s)
        self.fail_ids: set[str] = set()
        self._rows: dict[int, str] = {}

    async def store(self, event: Event) -> int | None:
        row = await super().store(event)
        if row is not None:
            self._rows[row] = event.id
        return row

    async def mark_done(self, row_id: int, error: str | None = None) -> None:
        if self._rows.get(row_id) in self.fail_ids:
            raise OSError("disk full")
        await super().mark_done(row_id, error)


async def test_a_lane_survives_a_failed_mark_done_and_recovery_takes_the_row(db: Database, tmp_path: Path) -> None:
    repo = FailingInbox(db, "h1", lease_s=30)
    handled: list[str] = []
    queued = asyncio.Event()

    async def handle(event: Event, _replier: Replier) -> None:
        if event.id == "e1":
            await queued.wait()  # the chat's next events are queued behind it meanwhile
        handled.append(event.id)

    outbox = Outbox(OutboxRepo(db, "h1"), MediaStore(db, tmp_path / "media"), {}, ChatRepo(db), Metrics())
    dispatcher = Dispatcher(
        repo,
        handle,
        lambda ev, live: EventReplier(ev, outbox, None, live),
        Metrics(),
        recover_all_at_start=True,
        recovery_interval_s=0.1,
        retry_budget_s=0.2,
    )
    await dispatcher.start()
    try:
        repo.fail_ids.add("e1")
        for i in (1, 2, 3):
            await dispatcher.submit(_event(i))
        queued.set()
        # The lane goes on past the failed item, in order, long before any lease runs out.
        await eventually(lambda: "e3" in handled, timeout=10)
        assert handled == ["e1", "e2", "e3"]
        # The failed row left the in-flight set (nothing renews it): once its lease is over,
        # recovery takes it again, and then it sticks.
        await eventually(lambda: dispatcher.busy == 0, timeout=10)
        repo.fail_ids.clear()
        async with db.engine.begin() as conn:
            await conn.execute(update(inbox_table).values(lease_until=utcnow() - timedelta(seconds=1)))

        async def all_done() -> bool:
            return await repo.backlog() == 0

        await eventually(all_done, timeout=10)
        assert handled.count("e1") >= 2 and handled.count("e2") == 1 and handled.count("e3") == 1
        assert dispatcher.busy == 0
    finally:
        await dispatcher.stop()


class MemoryChannel(Channel):
    """A platform in memory: records what is sent, in order."""

    name = "mem"
    limits = ChannelLimits(text_max=1000)

    def __init__(self, delay_s: float = 0.0) -> None:
        self.sent: list[tuple[str, str]] = []
        self.delay_s = delay_s

    def routes(self) -> list[Any]:
        return []

    async def send(self, request: SendRequest) -> SendResult:
        # A platform takes a while, some messages longer: other claims run meanwhile.
        await asyncio.sleep(self.delay_s * (3 if request.message.text[-1:] in "02468" else 0.1))
        self.sent.append((str(request.target), request.message.text))
        return SendResult((str(len(self.sent)),))


class FlakySentRepo(OutboxRepo):
    """An outbox whose first `fail` "sent" marks raise, as a database refusing writes would."""

    def __init__(self, db: Database, holder: str, lease_s: float, fail: int) -> None:
        super().__init__(db, holder, lease_s)
        self.fail = fail

    async def mark_sent(self, item_id: int, sent_ids: Any = ()) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise OSError("database is locked")
        await super().mark_sent(item_id, sent_ids)


async def test_a_failed_sent_mark_is_retried_and_the_message_goes_out_once(db: Database, tmp_path: Path) -> None:
    repo = FlakySentRepo(db, "h1", lease_s=0.3, fail=3)
    channel = MemoryChannel()
    outbox = Outbox(repo, MediaStore(db, tmp_path / "media"), {"mem": channel}, ChatRepo(db), Metrics(), poll_s=0.05)
    await outbox.start()
    try:
        target = ChatRef("mem", "private", "p")
        await outbox.put(NewMessage(target, Message.of("hello")))

        async def sent() -> bool:
            return [r["status"] for r in await repo.all_rows()] == ["sent"]

        await eventually(sent, timeout=20)
        # Long past the lease: nothing sends it again.
        await outbox.put(NewMessage(target, Message.of("after")))
        await eventually(lambda: len(channel.sent) >= 2, timeout=20)
        assert channel.sent == [("mem:private:p", "hello"), ("mem:private:p", "after")]
        assert outbox._task is not None and not outbox._task.done()
    finally:
        await outbox.stop()


async def test_one_chat_is_sent_in_order_while_messages_keep_coming(db: Database, tmp_path: Path) -> None:
    channel = MemoryChannel(delay_s=0.01)
    repo = OutboxRepo(db, "h1")
    outbox = Outbox(repo, MediaStore(db, tmp_path / "media"), {"mem": channel}, ChatRepo(db), Metrics(), poll_s=0.05)
    await outbox.start()
    try:
        chats = [ChatRef("mem", "private", f"p{c}") for c in range(3)]
        for i in range(60):
            await outbox.put(NewMessage(chats[i % 3], Message.of(str(i))))
            await asyncio.sleep(0.003)  # claims run between the puts, with sends under way
        await eventually(lambda: len(channel.sent) >= 60, timeout=30)
        for c in chats:
            texts = [int(t) for target, t in channel.sent if target == str(c)]
            assert texts == sorted(texts) and len(texts) == 20
    finally:
        await outbox.stop()


# --- poison events, through the whole hub ------------------------------------------------------


@pytest.fixture
async def platform() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    counter = iter(range(1, 10**6))
    fake.on("POST", "/send", lambda r: {"ok": True, "message_id": str(next(counter))})
    await fake.start()
    yield fake
    await fake.stop()


async def test_an_event_tried_five_times_is_given_up_and_its_sender_told_once(
    tmp_path: Path, platform: FakeServer
) -> None:
    settings = make_settings(tmp_path)
    channel = FakeChannel(platform.url)
    async with running_hub(settings, extra_channels=[channel], lease_s=0.3, recovery_interval_s=0.1) as h:
        channel.bind(h.hub.dispatcher)
        hub = h.hub
        # Stored by processes that died handling it, five times already.
        row = await hub.inbox.store(
            Event(
                id="poison",
                channel="fake",
                chat=ChatRef("fake", "private", "c9"),
                sender=User("fake", "u9"),
                message=Message.of("/help"),
            )
        )
        async with hub.db.engine.begin() as conn:
            await conn.execute(update(inbox_table).where(inbox_table.c.id == row).values(attempts=5))

        async def failed() -> bool:
            got = await hub.inbox.get("fake", "poison")
            return got is not None and got["status"] == "failed"

        await eventually(failed, timeout=20)
        await platform.wait_for(lambda: len(platform.calls("/send")) >= 1)
        # Another event goes through afterwards: the notice was not sent twice meanwhile.
        await post_event(h.url, {"id": "ok", "chat": "c9", "text": "/help"})
        await platform.wait_for(lambda: len(platform.calls("/send")) >= 2)
        sends = platform.calls("/send")
        assert [c.json["quote"] for c in sends] == ["poison", "ok"]
        assert sends[0].json["text"] == UNHANDLED_TEXT and sends[0].json["chat"] == "fake:private:c9"
        assert "gave up" in ((await hub.inbox.get("fake", "poison")) or {})["error"]


@pytest.mark.parametrize(
    ("channel", "context", "expected"),
    [
        ("qq", {}, "抱歉，这条消息我试了几次都没能处理，请稍后再试。"),  # a Chinese platform
        ("telegram", {"lang": "zh-hans"}, "抱歉，这条消息我试了几次都没能处理，请稍后再试。"),  # the sender's app
        ("telegram", {}, UNHANDLED_TEXT),
    ],
)
async def test_the_given_up_notice_is_in_the_chats_language(
    channel: str, context: dict[str, object], expected: str
) -> None:
    queued: list[NewMessage] = []

    class Queue:
        async def put(self, message: NewMessage) -> int:
            queued.append(message)
            return 1

    chat = ChatRef(channel, "private", "c1")
    event = Event(
        id="e1", channel=channel, chat=chat, sender=User(channel, "u1"), message=Message.of("hi"), context=context
    )
    await tell_unhandled(Queue(), event)  # type: ignore[arg-type]
    (notice,) = queued
    assert notice.message.text == expected and notice.target == chat


async def test_restarts_alone_do_not_count_as_attempts(tmp_path: Path) -> None:
    # A restart claims every pending row: only a handling that starts may count, or five
    # crash-restarts caused by one poison event would give up every event waiting behind it.
    from hub.storage.db import Database
    from hub.storage.inbox import InboxRepo
    from hub.storage.migrate import migrate

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await migrate(db)
    await db.start()
    try:
        repo = InboxRepo(db, "h1", lease_s=30)
        ids = []
        for i in range(3):
            ev = Event(
                id=f"e{i}",
                channel="fake",
                chat=ChatRef("fake", "private", "c"),
                sender=User("fake", "u"),
                message=Message.of("hi"),
            )
            ids.append(await repo.store(ev))
        for _ in range(6):
            rows = await repo.claim_stalled(10, take_all=True)
        assert [r.attempts for r in rows] == [0, 0, 0]
        assert ids[0] is not None
        await repo.note_attempt(ids[0])
        rows = await repo.claim_stalled(10, take_all=True)
        assert [r.attempts for r in rows] == [1, 0, 0]
    finally:
        await db.close()
