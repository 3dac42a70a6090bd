from datetime import UTC, datetime

import pytest

from hub.events import (
    Audio,
    ChatRef,
    Event,
    Image,
    Mention,
    Message,
    Quote,
    Text,
    Unsupported,
    User,
    event_from_dict,
    event_to_dict,
    message_from_list,
    message_to_list,
    segment_from_dict,
)


@pytest.mark.parametrize(
    "text,ref",
    [
        ("telegram:group:-100123", ChatRef("telegram", "group", "-100123")),
        ("telegram:group:-100123#42", ChatRef("telegram", "group", "-100123", "42")),
        ("wechat:private:oAbc-12_x", ChatRef("wechat", "private", "oAbc-12_x")),
        # chat_id is everything after the second colon, colons included
        ("onebot:group:123:456", ChatRef("onebot", "group", "123:456")),
        ("web:private:sess-1", ChatRef("web", "private", "sess-1")),
    ],
)
def test_chatref_round_trips(text: str, ref: ChatRef) -> None:
    assert ChatRef.parse(text) == ref
    assert str(ref) == text
    assert ChatRef.parse(str(ref)) == ref


@pytest.mark.parametrize("bad", ["", "telegram", "telegram:group", "telegram:group:", "telegram:channel:1", ":group:1"])
def test_chatref_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        ChatRef.parse(bad)


def test_message_text_and_media() -> None:
    msg = Message((Mention("1", "bot"), Text(" hello "), Image(url="http://x/a.png"), Text("world")))
    assert msg.text == "hello world"
    assert [m.kind for m in msg.media] == ["image"]


def test_unknown_segment_becomes_unsupported() -> None:
    seg = segment_from_dict({"type": "poll", "kind": "poll", "summary": "a poll"})
    assert isinstance(seg, Unsupported)
    assert seg.kind == "poll"


def test_message_json_round_trip_keeps_every_segment() -> None:
    msg = Message(
        (
            Text("hi"),
            Mention("42", "Ann"),
            Quote("m1", "earlier"),
            Image(data=b"\x89PNG", name="a.png", mime="image/png"),
            Audio(url="http://x/v.ogg", voice=True, duration=3.5),
            Unsupported("sticker", "a cat"),
        )
    )
    assert message_from_list(message_to_list(msg)) == msg


def test_event_json_round_trip() -> None:
    ev = Event(
        id="u1",
        channel="telegram",
        chat=ChatRef("telegram", "group", "-1001", "7"),
        sender=User("telegram", "12345", "Ann"),
        message=Message.of("/help"),
        mentions_bot=True,
        reply_to="99",
        received_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        context={"msg_id": "abc"},
    )
    back = event_from_dict(event_to_dict(ev))
    assert back == ev
    assert back.sender.key == "telegram:12345"
