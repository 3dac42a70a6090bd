"""Telegram end to end: signed updates into the real app, Bot API calls out to the fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_telegram import (
    BLOCKED,
    BOT_ID,
    BOT_USERNAME,
    CHAT_NOT_FOUND,
    SECRET,
    SERVER_ERROR,
    USER,
    FakeTelegram,
    command_entity,
    mention_entity,
    message_update,
    migrated,
    post_update,
    telegram_toml,
    too_many,
)
from harness import RunningHub, eventually, make_settings, running_hub

from hub.routing.context import Context
from hub.skills.chat import NO_MODEL

GROUP = -1001234567890


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(tmp_path: Path, tg: FakeTelegram) -> AsyncIterator[RunningHub]:
    settings = make_settings(tmp_path, telegram_toml(tg.url, public_url="https://hub.example.org"))
    async with running_hub(settings) as h:
        yield h


async def handled(h: RunningHub, update: dict[str, object]) -> dict[str, object]:
    """Wait until the inbox row of an update is handled; returns the row."""
    row: dict[str, object] | None = None

    async def done() -> bool:
        nonlocal row
        row = await h.hub.inbox.get("telegram", str(update["update_id"]))
        return row is not None and row["status"] == "done"

    await eventually(done)
    assert row is not None
    return row


async def test_start_learns_the_bot_name_and_registers_the_webhook(hub: RunningHub, tg: FakeTelegram) -> None:
    assert tg.calls("getMe")
    assert hub.hub.channels["telegram"].bot_names == (BOT_USERNAME,)
    assert tg.webhook == {
        "url": "https://hub.example.org/webhooks/telegram",
        "secret_token": SECRET,
        "allowed_updates": ["message"],
    }


async def test_a_private_text_reaches_the_chat_skill_and_its_answer_arrives(hub: RunningHub, tg: FakeTelegram) -> None:
    update = message_update("hello there")
    assert await post_update(hub.url, update) == 200
    await tg.wait_for(lambda: len(tg.delivered()) == 1)
    (sent,) = tg.delivered()
    assert sent.params["chat_id"] == str(USER["id"])
    assert sent.params["text"] == NO_MODEL
    assert "reply_parameters" not in sent.params  # no quote needed in a private chat
    row = await handled(hub, update)
    assert row["chat"] == "telegram:private:1111111" and row["sender"] == "telegram:1111111"


async def test_help_with_the_bot_name_in_a_group_is_answered_in_the_group_quoting_it(
    hub: RunningHub, tg: FakeTelegram
) -> None:
    text = f"/help@{BOT_USERNAME}"
    update = message_update(text, chat_id=GROUP, entities=command_entity(text), message_id=4242)
    other = message_update("/help@OtherBot", chat_id=GROUP, entities=command_entity("/help@OtherBot"))
    assert await post_update(hub.url, other) == 200
    assert await post_update(hub.url, update) == 200
    await tg.wait_for(lambda: len(tg.delivered()) >= 1)
    await handled(hub, other)
    (sent,) = tg.delivered()
    assert sent.params["chat_id"] == str(GROUP)
    assert "/help" in sent.params["text"] and "Mention me" in sent.params["text"]
    assert sent.params["reply_parameters"] == {"message_id": 4242, "allow_sending_without_reply": True}


async def test_group_text_needs_a_mention_or_a_reply_to_the_bot(hub: RunningHub, tg: FakeTelegram) -> None:
    plain = message_update("hello all", chat_id=GROUP)
    await post_update(hub.url, plain)
    await handled(hub, plain)
    assert tg.calls("sendMessage") == []

    text = f"@{BOT_USERNAME}, how are you?"
    mentioned = message_update(text, chat_id=GROUP, entities=[mention_entity(text, f"@{BOT_USERNAME}")])
    await post_update(hub.url, mentioned)
    row = await handled(hub, mentioned)
    payload = row["payload"]
    assert isinstance(payload, dict)
    assert payload["mentions_bot"] is True
    assert [s for s in payload["message"] if s["type"] == "text"] == [{"type": "text", "text": "how are you?"}]

    # A text_mention (a user without a username is mentioned by id) of the bot counts too.
    by_id = message_update(
        "Hub Test Bot what time is it",
        chat_id=GROUP,
        entities=[
            {
                "type": "text_mention",
                "offset": 0,
                "length": 12,
                "user": {"id": BOT_ID, "is_bot": True, "first_name": "Hub Test Bot"},
            }
        ],
    )
    await post_update(hub.url, by_id)
    # So does a reply to one of the bot's own messages.
    bot_said = {
        "message_id": 77,
        "date": 1441645532,
        "chat": {"id": GROUP, "type": "supergroup", "title": "T"},
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Hub Test Bot", "username": BOT_USERNAME},
        "text": "an earlier answer",
    }
    replying = message_update("and then?", chat_id=GROUP, reply_to_message=bot_said)
    await post_update(hub.url, replying)
    await tg.wait_for(lambda: len(tg.delivered()) == 3)
    assert all(c.params["text"] == NO_MODEL and c.params["chat_id"] == str(GROUP) for c in tg.delivered())
    row = await handled(hub, by_id)
    assert isinstance(row["payload"], dict)
    assert [s["text"] for s in row["payload"]["message"] if s["type"] == "text"] == ["what time is it"]
    row = await handled(hub, replying)
    assert isinstance(row["payload"], dict) and row["payload"]["reply_to_bot"] is True


async def test_a_webhook_with_a_wrong_or_missing_secret_is_refused_and_never_processed(
    hub: RunningHub, tg: FakeTelegram
) -> None:
    wrong = message_update("/help")
    missing = message_update("/help")
    assert await post_update(hub.url, wrong, secret="not-the-secret") == 403
    assert await post_update(hub.url, missing, secret=None) == 401
    assert await post_update(hub.url, None, raw=b"{not json") == 400
    assert await post_update(hub.url, {"message": {"text": "no update id"}}) == 400
    assert await post_update(hub.url, {"update_id": 5, "message": {"text": "no chat"}}) == 400
    ok = message_update("/help")
    assert await post_update(hub.url, ok) == 200
    await handled(hub, ok)
    for update in (wrong, missing):
        assert await hub.hub.inbox.get("telegram", str(update["update_id"])) is None
    assert await hub.hub.inbox.get("telegram", "5") is None
    assert len(tg.calls("sendMessage")) == 1


async def test_the_same_update_three_times_gets_one_reply(hub: RunningHub, tg: FakeTelegram) -> None:
    update = message_update("/help")
    statuses = await asyncio.gather(*(post_update(hub.url, update) for _ in range(3)))
    assert statuses == [200, 200, 200]
    await handled(hub, update)
    await tg.wait_for(lambda: len(tg.delivered()) >= 1)
    assert await post_update(hub.url, update) == 200  # a late redelivery
    await post_update(hub.url, message_update("/help"))  # a later update: its answer comes after
    await tg.wait_for(lambda: len(tg.delivered()) >= 2)
    assert len(tg.calls("sendMessage")) == 2


async def test_other_update_types_are_acked_and_ignored(hub: RunningHub, tg: FakeTelegram) -> None:
    edited = message_update("/help")
    edited = {"update_id": edited["update_id"], "edited_message": {**edited["message"], "edit_date": 1441645600}}
    joined = message_update(None, chat_id=GROUP, new_chat_members=[USER])
    poll = message_update(
        None,
        chat_id=GROUP,
        poll={
            "id": "1",
            "question": "?",
            "options": [{"text": "a", "voter_count": 0}],
            "total_voter_count": 0,
            "is_closed": False,
            "is_anonymous": True,
            "type": "regular",
            "allows_multiple_answers": False,
        },
    )
    member = {
        "update_id": 99001,
        "my_chat_member": {
            "chat": {"id": GROUP, "type": "supergroup", "title": "T"},
            "from": USER,
            "date": 1441645532,
            "old_chat_member": {"status": "left", "user": USER},
            "new_chat_member": {"status": "member", "user": USER},
        },
    }
    unknown = {"update_id": 99002, "some_future_update": {"x": 1}}
    for update in (edited, joined, poll, member, unknown):
        assert await post_update(hub.url, update) == 200
    last = message_update("/help")
    await post_update(hub.url, last)
    await handled(hub, last)
    for update in (edited, joined, poll, member, unknown):
        assert await hub.hub.inbox.get("telegram", str(update["update_id"])) is None
    assert len(tg.calls("sendMessage")) == 1


async def test_sendmessage_500_then_429_delivers_once_no_sooner_than_retry_after(
    hub: RunningHub, tg: FakeTelegram
) -> None:
    tg.script("sendMessage", SERVER_ERROR, too_many(3))
    await post_update(hub.url, message_update("/help"))
    await tg.wait_for(lambda: len(tg.delivered()) == 1, timeout=20)
    calls = tg.calls("sendMessage")
    assert len(calls) == 3
    assert calls[2].at - calls[1].at >= 3.0, "sent again sooner than retry_after allowed"

    async def marked_sent() -> bool:
        rows = await hub.hub.outbox_repo.all_rows()
        return [(r["status"], r["attempts"]) for r in rows] == [("sent", 2)]

    await eventually(marked_sent)


@pytest.mark.parametrize("answer", [BLOCKED, CHAT_NOT_FOUND], ids=["blocked", "chat-not-found"])
async def test_blocked_or_gone_chats_are_marked_and_not_retried(
    hub: RunningHub, tg: FakeTelegram, answer: object
) -> None:
    tg.script("sendMessage", answer)  # type: ignore[arg-type]
    await post_update(hub.url, message_update("/help"))

    async def failed() -> bool:
        rows = await hub.hub.outbox_repo.all_rows()
        return bool(rows) and rows[0]["status"] == "failed"

    await eventually(failed)
    chat = await hub.hub.chats.get("telegram:private:1111111")
    assert chat.unreachable
    await asyncio.sleep(0.3)
    assert len(tg.calls("sendMessage")) == 1


async def test_a_group_that_became_a_supergroup_is_recorded_and_answered_there(
    hub: RunningHub, tg: FakeTelegram
) -> None:
    tg.script("sendMessage", migrated(-1009999))
    await post_update(hub.url, message_update("/help", chat_id=-555, chat_type="group"))
    await tg.wait_for(lambda: len(tg.delivered()) == 1)
    assert tg.delivered()[0].params["chat_id"] == "-1009999"
    chat_row = await hub.hub.chats.get("telegram:group:-555")
    assert not chat_row.unreachable

    async def recorded() -> bool:
        from sqlalchemy import select

        from hub.storage.models import chats

        async with hub.hub.db.engine.connect() as conn:
            r = (await conn.execute(select(chats.c.migrated_to).where(chats.c.ref == "telegram:group:-555"))).first()
        return r is not None and r.migrated_to == "telegram:group:-1009999"

    await eventually(recorded)


async def test_long_text_is_split_at_4096(hub: RunningHub, tg: FakeTelegram) -> None:
    # 11,000 characters; the emoji count twice in Telegram's (UTF-16) measure.
    long = ("word " * 1600).strip() + " 🙂" * 1000

    async def essay(ctx: Context) -> None:
        await ctx.reply(long)

    hub.hub.router.register("essay", essay, description="a long answer")
    await post_update(hub.url, message_update("/essay"))

    async def sent() -> bool:
        return [r["status"] for r in await hub.hub.outbox_repo.all_rows()] == ["sent"]

    await eventually(sent)
    texts = [c.params["text"] for c in tg.delivered()]
    assert len(texts) == 3 and all(len(t.encode("utf-16-le")) // 2 <= 4096 for t in texts)
    assert " ".join(texts).split() == long.split()


async def test_chat_action_and_streamed_reply_by_edits(hub: RunningHub, tg: FakeTelegram) -> None:
    async def story(ctx: Context) -> None:
        await ctx.action("upload_video")
        stream = ctx.stream()
        for i in range(24):
            await stream.push(f"part{i} ")
            await asyncio.sleep(0.1)
        await stream.finish()

    hub.hub.router.register("story", story, description="a streamed answer")
    update = message_update("/story")
    await post_update(hub.url, update)
    await handled(hub, update)
    (action,) = tg.calls("sendChatAction")
    assert action.params["action"] == "upload_video" and action.params["chat_id"] == "1111111"
    (first,) = tg.calls("sendMessage")
    edits = tg.calls("editMessageText")
    # The first message waits a second for text to gather, then grows by edits.
    assert first.params["text"].startswith("part0 part1 part2 ") and "part23" not in first.params["text"]
    assert 1 <= len(edits) <= 3
    assert len({(e.params["chat_id"], e.params["message_id"]) for e in edits}) == 1
    gaps = [b.at - a.at for a, b in zip([first, *edits], edits, strict=False)]
    assert all(g >= 0.95 for g in gaps), gaps  # at most one edit per second in a private chat
    assert edits[-1].params["text"].strip() == "".join(f"part{i} " for i in range(24)).strip()
    rows = await hub.hub.outbox_repo.all_rows()
    assert [r["status"] for r in rows] == ["sent"]  # recorded, so a restart does not send it again


async def test_a_quick_streamed_answer_is_one_message_without_edits(hub: RunningHub, tg: FakeTelegram) -> None:
    async def quick(ctx: Context) -> None:
        stream = ctx.stream()
        for word in ("a ", "quick ", "answer"):
            await stream.push(word)
        await stream.finish()

    hub.hub.router.register("quick", quick, description="a fast streamed answer")
    text = f"/quick@{BOT_USERNAME}"
    update = message_update(text, chat_id=GROUP, message_id=808)
    await post_update(hub.url, update)
    await handled(hub, update)
    (sent,) = tg.calls("sendMessage")
    assert sent.params["text"] == "a quick answer" and tg.calls("editMessageText") == []
    assert sent.params["reply_parameters"] == {"message_id": 808, "allow_sending_without_reply": True}
