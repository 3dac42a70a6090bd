"""OneBot v11 end to end: a fake implementation dials the real hub's reverse WebSocket and posts
signed HTTP events; the replies come back as actions, through the right account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_onebot import FakeOneBot, at, group_message, plain_text, private_message, reply, text
from fake_openai import FakeOpenAI
from harness import RunningHub, make_settings, running_hub
from sqlalchemy import select

from hub.events import ChatRef, Message
from hub.settings import Settings
from hub.storage.models import inbox, outbox
from hub.storage.outbox import NewMessage

TOKEN = "ws-token-123"
SECRET = "post-secret-456"
BOT = "10001"
BOT2 = "10002"
USER = 20001


def settings_for(tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI, *, api: bool = True) -> Settings:
    toml = f"""
[onebot]
enabled = true
access_token = "{TOKEN}"
secret = "{SECRET}"
{f'api_base = "{fake.url}"' if api else ""}

[[models]]
name = "fake"
base_url = "{model.base_url}"
api_key = "k"
model = "m"
"""
    return make_settings(tmp_path, toml)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOneBot]:
    bot = FakeOneBot(token=TOKEN, secret=SECRET)
    await bot.start()
    yield bot
    await bot.stop()


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    m = FakeOpenAI()
    await m.start()
    yield m
    await m.stop()


@pytest.fixture
async def hub(tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI) -> AsyncIterator[RunningHub]:
    async with running_hub(settings_for(tmp_path, fake, model, api=False)) as h:
        yield h


async def inbox_rows(h: RunningHub) -> list[Any]:
    async with h.hub.db.engine.connect() as conn:
        return list((await conn.execute(select(inbox))).all())


async def outbox_rows(h: RunningHub) -> list[Any]:
    async with h.hub.db.engine.connect() as conn:
        return list((await conn.execute(select(outbox).order_by(outbox.c.id))).all())


async def test_ws_private_message_is_answered_once_through_the_socket(hub: RunningHub, fake: FakeOneBot) -> None:
    await fake.connect(hub.url, BOT)
    event = private_message(BOT, USER, [text("hello")], 501)
    for _ in range(3):  # the same event three times: one reply
        await fake.push(BOT, event)
    (sent,) = await fake.wait_sends(1)
    assert (sent.self_id, sent.action, sent.params["user_id"]) == (BOT, "send_private_msg", USER)
    assert sent.params["message"][0] == {"type": "reply", "data": {"id": "501"}}
    assert plain_text(sent) == "re: hello"
    (row,) = await inbox_rows(hub)
    assert (row.channel, row.event_id, row.chat, row.sender) == (
        "onebot",
        f"{BOT}/501",
        f"onebot:private:{BOT}/{USER}",
        f"onebot:{USER}",
    )
    await fake.push(BOT, private_message(BOT, USER, "[CQ:face,id=1]again &#91;x&#93;", 502))
    sends = await fake.wait_sends(2)
    assert plain_text(sends[1]) == "re: again [x]"
    assert len(fake.sends()) == 2


async def test_http_post_is_stored_then_acked_and_answered_through_the_api(
    tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI
) -> None:
    async with running_hub(settings_for(tmp_path, fake, model)) as h:
        event = private_message(BOT, USER, "你好", 601)
        answers = [await fake.post(h.url, event) for _ in range(3)]
        assert [(a.status, a.text) for a in answers] == [(204, "")] * 3
        assert all(a.seconds < 1.0 for a in answers)
        (sent,) = await fake.wait_sends(1)
        assert (sent.self_id, sent.action, sent.params["user_id"], plain_text(sent)) == (
            "http",
            "send_private_msg",
            USER,
            "re: 你好",
        )
        (call,) = fake.server.calls("/send_private_msg")
        assert call.headers["Authorization"] == f"Bearer {TOKEN}"
        assert len(await inbox_rows(h)) == 1
        # An unsigned, a forged and a wrongly keyed post: refused, never stored, never answered.
        forged = private_message(BOT, USER, "forged", 602)
        assert (await fake.post(h.url, forged, sign=False)).status == 401
        assert (await fake.post(h.url, forged, secret="not-the-secret")).status == 403
        assert len(await inbox_rows(h)) == 1
        assert len(fake.sends()) == 1


async def test_a_wrong_or_missing_token_is_refused_at_the_handshake(hub: RunningHub, fake: FakeOneBot) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as missing:
        await fake.connect(hub.url, BOT, token="")
    assert missing.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as wrong:
        await fake.connect(hub.url, BOT, token="ws-token-12")
    assert wrong.value.status == 403
    assert BOT not in hub.hub.channels["onebot"].connections  # type: ignore[attr-defined]
    # The spec's other way: ?access_token= (with no header).
    await fake.connect(hub.url, BOT, token="", query=f"?access_token={TOKEN}")
    await fake.push(BOT, private_message(BOT, USER, "via query", 701))
    (sent,) = await fake.wait_sends(1)
    assert plain_text(sent) == "re: via query"


async def test_group_text_is_for_the_bot_only_when_it_mentions_or_replies_to_it(
    hub: RunningHub, fake: FakeOneBot, model: FakeOpenAI
) -> None:
    await fake.connect(hub.url, BOT)
    group = 30001
    await fake.push(BOT, group_message(BOT, group, USER, [text("just chatting")], 801))
    await fake.push(BOT, group_message(BOT, group, USER, [at(99999), text(" not you")], 802))
    await fake.push(BOT, group_message(BOT, group, USER, [at(BOT), text(" hi bot")], 803))
    (first,) = await fake.wait_sends(1)
    assert (first.action, first.params["group_id"], plain_text(first)) == ("send_group_msg", group, "re: Bob: hi bot")
    # The bot's own message id, from the send's answer: a reply to it addresses the bot.
    await fake.push(BOT, group_message(BOT, group, USER, [reply(first.message_id), text("and this?")], 804))
    await fake.push(BOT, group_message(BOT, group, USER, f"[CQ:at,qq={BOT}] cq form", 805))
    await fake.wait_sends(3)
    texts = sorted(plain_text(a) for a in fake.sends())
    assert texts == ["re: Bob: and this?", "re: Bob: cq form", "re: Bob: hi bot"]
    assert first.params["message"][0] == {"type": "reply", "data": {"id": "803"}}
    assert len(await inbox_rows(hub)) == 5  # stored, and the two not for the bot left alone
    assert len(model.requests) == 3


async def test_two_accounts_on_one_hub_are_kept_apart(hub: RunningHub, fake: FakeOneBot) -> None:
    await fake.connect(hub.url, BOT)
    await fake.connect(hub.url, BOT2)
    # The same person, the same message id, on both accounts: two chats, two events.
    await fake.push(BOT, private_message(BOT, USER, "to one", 901))
    await fake.push(BOT2, private_message(BOT2, USER, "to two", 901))
    await fake.wait_sends(2)
    by_account = {a.self_id: plain_text(a) for a in fake.sends()}
    assert by_account == {BOT: "re: to one", BOT2: "re: to two"}
    chats = sorted(r.chat for r in await inbox_rows(hub))
    assert chats == [f"onebot:private:{BOT}/{USER}", f"onebot:private:{BOT2}/{USER}"]
    # An event claiming another account on this socket is not taken.
    await fake.push(BOT, private_message(BOT2, USER, "spoofed", 902))
    await fake.push(BOT, private_message(BOT, USER, "after", 903))
    await fake.wait_sends(3)
    assert [plain_text(a) for a in fake.sends(BOT)] == ["re: to one", "re: after"]


async def test_a_dropped_socket_loses_nothing_when_the_account_returns(hub: RunningHub, fake: FakeOneBot) -> None:
    await fake.connect(hub.url, BOT)
    fake.drop_on_action = 1  # the implementation dies with the reply's action unanswered
    await fake.push(BOT, private_message(BOT, USER, "first", 1001))
    await fake.wait_for(lambda: len(fake.dropped) == 1)
    # Queued while the account is away (a finished job, a delivery-API message).
    later = ChatRef("onebot", "private", f"{BOT}/{USER + 1}")
    await hub.hub.outbox.put(NewMessage(target=later, message=Message.of("while away")))

    async def retried() -> bool:
        rows = await outbox_rows(hub)
        return len(rows) == 2 and all(r.attempts >= 1 and r.status == "pending" for r in rows)

    await _until(retried)
    await fake.connect(hub.url, BOT)
    await fake.wait_sends(2)
    assert sorted(plain_text(a) for a in fake.sends()) == ["re: first", "while away"]
    assert all(a.self_id == BOT for a in fake.sends())
    await _until(lambda_rows_sent(hub, 2))
    # A second connection of the same account takes over; the reply goes through it.
    first_socket = fake._sockets[BOT].ws
    await fake.connect(hub.url, BOT)
    await fake.wait_for(lambda: first_socket.closed)
    await fake.push(BOT, private_message(BOT, USER, "after takeover", 1002))
    await fake.wait_sends(3)
    assert plain_text(fake.sends()[-1]) == "re: after takeover"
    assert len(fake.sends()) == 3


def lambda_rows_sent(h: RunningHub, n: int) -> Any:
    async def check() -> bool:
        return sum(r.status == "sent" for r in await outbox_rows(h)) == n

    return check


async def _until(check: Any, timeout: float = 15.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_returning_account_gets_its_waiting_messages_at_once(hub: RunningHub, fake: FakeOneBot) -> None:
    target = ChatRef("onebot", "group", f"{BOT}/30002")
    other = ChatRef("onebot", "group", f"{BOT2}/30002")
    for chat in (target, other):
        await hub.hub.outbox.put(NewMessage(target=chat, message=Message.of(f"to {chat.chat_id}")))

    async def both_tried() -> bool:
        rows = await outbox_rows(hub)
        return len(rows) == 2 and all(r.attempts >= 1 for r in rows)

    await _until(both_tried)
    # Far into the backoff: only the account's return can make them due now.
    repo = hub.hub.outbox_repo
    for row in await outbox_rows(hub):
        await repo.mark_retry(row.id, attempts=row.attempts, next_at=row.created_at + timedelta(hours=1), error="x")
    await fake.connect(hub.url, BOT)
    (sent,) = await fake.wait_sends(1)
    assert (sent.self_id, sent.params["group_id"], plain_text(sent)) == (BOT, 30002, f"to {BOT}/30002")
    rows = {r.target: r.status for r in await outbox_rows(hub)}
    assert rows[str(other)] == "pending"  # the other account's message still waits for it


async def test_answers_that_refuse_a_send_fail_it_or_retry_it(hub: RunningHub, fake: FakeOneBot) -> None:
    await fake.connect(hub.url, BOT)
    fake.fail_next = [1400]  # bad request: final
    await hub.hub.outbox.put(NewMessage(target=ChatRef("onebot", "private", f"{BOT}/1"), message=Message.of("a")))
    await _until(lambda_rows_status(hub, ["failed"]))
    fake.fail_next = [100]  # the implementation could not send right now: retried
    await hub.hub.outbox.put(NewMessage(target=ChatRef("onebot", "private", f"{BOT}/2"), message=Message.of("b")))
    await _until(lambda_rows_status(hub, ["failed", "sent"]))
    (failed, sent) = await outbox_rows(hub)
    assert "retcode=1400" in failed.last_error and sent.attempts == 1


def lambda_rows_status(h: RunningHub, statuses: list[str]) -> Any:
    async def check() -> bool:
        return [r.status for r in await outbox_rows(h)] == statuses

    return check


async def test_a_reply_to_what_the_bot_sent_before_a_restart_still_addresses_it(
    tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI
) -> None:
    settings = settings_for(tmp_path, fake, model, api=False)
    group = ChatRef("onebot", "group", f"{BOT}/30003")
    async with running_hub(settings) as h:
        await fake.connect(h.url, BOT)
        await h.hub.outbox.put(NewMessage(target=group, message=Message.of("your video is ready")))
        (sent,) = await fake.wait_sends(1)
        await _until(lambda_rows_status(h, ["sent"]))
    await fake.drop(BOT)
    async with running_hub(settings) as h:
        await fake.connect(h.url, BOT)
        await fake.push(BOT, group_message(BOT, 30003, USER, [reply(sent.message_id), text("thanks!")], 1101))
        await fake.wait_sends(2)
        assert plain_text(fake.sends()[-1]) == "re: Bob: thanks!"
