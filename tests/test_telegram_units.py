"""Telegram pieces, table-tested: mention stripping (UTF-16 offsets), update loading, send
planning, and the one mapping of Bot API failures to SendError."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import SendMessage
from aiogram.types import MessageEntity, User
from fake_telegram import command_entity, mention_entity, message_update
from pydantic import ValidationError

from hub.channels.telegram.parse import (
    NOT_PLAIN,
    BotIdentity,
    load_update,
    parse_plain,
    parse_update,
    strip_bot_mentions,
)
from hub.channels.telegram.render import MediaPart, TextPart, plan, send_error
from hub.errors import SendError
from hub.events import Event, File, Image, Message, Video

ME = BotIdentity(123456789, "HubTestBot")
METHOD = SendMessage(chat_id=1, text="x")


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def mention(text: str, name: str) -> MessageEntity:
    i = text.index(name)
    return MessageEntity(type="mention", offset=utf16(text[:i]), length=utf16(name))


@pytest.mark.parametrize(
    ("text", "entities", "expected"),
    [
        ("@HubTestBot hello", lambda t: [mention(t, "@HubTestBot")], ("hello", True)),
        ("@hubtestbot, hello", lambda t: [mention(t, "@hubtestbot")], ("hello", True)),
        # Offsets count UTF-16 units: the emoji before the mention counts twice.
        ("👋🏽 hi @HubTestBot, what's up", lambda t: [mention(t, "@HubTestBot")], ("👋🏽 hi , what's up", True)),
        ("ask @OtherBot please", lambda t: [mention(t, "@OtherBot")], ("ask @OtherBot please", False)),
        (
            "Hub Test Bot tell me",
            lambda t: [
                MessageEntity(
                    type="text_mention",
                    offset=0,
                    length=12,
                    user=User(id=123456789, is_bot=True, first_name="Hub Test Bot"),
                )
            ],
            ("tell me", True),
        ),
        (
            "Alice tell me",
            lambda t: [
                MessageEntity(
                    type="text_mention", offset=0, length=5, user=User(id=42, is_bot=False, first_name="Alice")
                )
            ],
            ("Alice tell me", False),
        ),
        (
            "/help@HubTestBot",
            lambda t: [MessageEntity(type="bot_command", offset=0, length=16)],
            ("/help@HubTestBot", False),
        ),
    ],
)
def test_strip_bot_mentions(text: str, entities: object, expected: tuple[str, bool]) -> None:
    assert strip_bot_mentions(text, entities(text), ME) == expected  # type: ignore[operator]


def test_load_update_drops_a_part_it_cannot_read_and_ignores_other_types() -> None:
    newer_poll = message_update("what do you think?", poll={"id": "1", "question": "?", "options": "future shape"})
    update = load_update(newer_poll)
    assert update is not None and update.message is not None and update.message.poll is None
    event = parse_update(update, ME)
    assert event is not None and event.message.text == "what do you think?"
    assert load_update({"update_id": 1, "edited_message": {"anything": True}}) is None
    with pytest.raises(ValidationError):
        load_update({"update_id": 2, "message": {"text": "no chat, no date"}})


def test_event_of_a_group_topic_message_carries_the_thread_and_the_message_id() -> None:
    raw = message_update(
        "@HubTestBot hi",
        chat_id=-1001,
        message_id=55,
        is_topic_message=True,
        message_thread_id=7,
        entities=[{"type": "mention", "offset": 0, "length": 11}],
    )
    update = load_update(raw)
    assert update is not None
    event = parse_update(update, ME)
    assert event is not None
    assert str(event.chat) == "telegram:group:-1001#7"
    assert event.id == str(raw["update_id"]) and event.context == {"message_id": 55}
    assert event.mentions_bot and event.message.text == "hi"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (Message.of("hi"), [TextPart("hi")]),
        (Message.of(Image(url="u"), "a cat"), [MediaPart(Image(url="u"), "a cat")]),
        (
            Message.of(Image(url="u"), "x" * 1100),
            [MediaPart(Image(url="u")), TextPart("x" * 1100)],
        ),
        (
            Message.of(Video(url="v", caption="c" * 1500)),
            [MediaPart(Video(url="v", caption="c" * 1500)), TextPart("c" * 1500)],
        ),
        (
            Message.of(Image(url="a"), File(url="b", caption="the file"), "both"),
            [MediaPart(Image(url="a")), MediaPart(File(url="b", caption="the file"), "the file"), TextPart("both")],
        ),
        (Message.of("a" * 5000), [TextPart("a" * 4096), TextPart("a" * 904)]),
    ],
)
def test_plan(message: Message, expected: list[object]) -> None:
    assert plan(message) == expected


@pytest.mark.parametrize(
    ("exc", "retryable", "retry_after", "final_for_chat"),
    [
        (TelegramRetryAfter(METHOD, "Too Many Requests: retry after 3", 3), True, 3.0, False),
        (TelegramForbiddenError(METHOD, "Forbidden: bot was blocked by the user"), False, None, True),
        (TelegramForbiddenError(METHOD, "Forbidden: bot was kicked from the group chat"), False, None, True),
        (TelegramBadRequest(METHOD, "Bad Request: chat not found"), False, None, True),
        (TelegramBadRequest(METHOD, "Bad Request: message is too long"), False, None, False),
        (TelegramMigrateToChat(METHOD, "Bad Request: group chat was upgraded", -100123), False, None, True),
        (TelegramServerError(METHOD, "Internal Server Error"), True, None, False),
        (TelegramNetworkError(METHOD, "ClientConnectorError: refused"), True, None, False),
        (TelegramEntityTooLarge(METHOD, "Request Entity Too Large"), False, None, False),
        (TelegramUnauthorizedError(METHOD, "Unauthorized"), True, 300.0, False),
        (TimeoutError(), True, None, False),
        (FileNotFoundError("/no/such/file"), False, None, False),
    ],
)
def test_send_error_mapping(
    exc: BaseException, retryable: bool, retry_after: float | None, final_for_chat: bool
) -> None:
    err = send_error(exc)
    assert isinstance(err, SendError)
    assert (err.retryable, err.retry_after, err.final_for_chat) == (retryable, retry_after, final_for_chat)
    assert type(exc).__name__ in str(err)


def _slow(data: dict[str, object]) -> Event | None:
    update = load_update(data)
    assert update is not None
    return parse_update(update, ME)


def _same(a: Event | None, b: Event | None) -> bool:
    if a is None or b is None:
        return a is b
    return dataclasses.replace(a, received_at=b.received_at) == b


PLAIN_SAMPLES = [
    message_update("/help", entities=command_entity("/help")),
    message_update("hello there"),
    message_update(
        "@HubTestBot hi",
        chat_id=-100123,
        chat_type="supergroup",
        entities=[mention_entity("@HubTestBot hi", "@HubTestBot")],
    ),
    message_update(
        "👋🏽 hi @hubtestbot, up?",
        chat_id=-5,
        chat_type="group",
        entities=[mention_entity("👋🏽 hi @hubtestbot, up?", "@hubtestbot")],
    ),
    message_update("just talking", chat_id=-5, chat_type="group"),
    message_update("from a bot", from_user={"id": 42, "is_bot": True, "first_name": "B"}),
    message_update("no last name", from_user={"id": 43, "is_bot": False, "first_name": "Ann"}),
    message_update("你好", from_user={"id": 44, "is_bot": False, "first_name": "Li", "language_code": "zh-hans"}),
    message_update("   "),
    message_update("a channel", chat_type="channel"),
]


@pytest.mark.parametrize("data", PLAIN_SAMPLES)
def test_a_plain_message_reads_the_same_without_aiogram(data: dict[str, object]) -> None:
    fast = parse_plain(data, ME)
    assert fast is not NOT_PLAIN
    assert _same(fast, _slow(data))


def test_whatever_the_plain_reader_takes_aiogram_reads_the_same() -> None:
    rng = random.Random(7)
    odd: list[object] = ["12", 12.0, True, None, -1, 2**60, "", [], {}, {"id": 1}, "x" * 5]
    taken = 0
    for n in range(3000):
        data = copy.deepcopy(rng.choice(PLAIN_SAMPLES))
        msg = data["message"]
        assert isinstance(msg, dict)
        where = rng.choice([data, msg, msg["chat"], msg["from"], *msg.get("entities", [])])
        key = rng.choice([*where, "extra", "reply_to_message", "sender_chat"])
        where[key] = rng.choice(odd)
        fast = parse_plain(data, ME)
        if fast is NOT_PLAIN:
            continue
        taken += 1
        assert _same(fast, _slow(data)), (n, data)
    assert taken > 100


def test_an_update_the_plain_reader_leaves_to_aiogram() -> None:
    reply = message_update("hi", reply_to_message={"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private"}})
    for data in (
        reply,
        message_update("x", message_id="12"),  # aiogram coerces it
        message_update("x", chat_id=2**60),  # out of Telegram's range: refused there
        message_update(None, caption="a photo", photo=[]),
        {"update_id": 1, "edited_message": {}},
    ):
        assert parse_plain(data, ME) is NOT_PLAIN
