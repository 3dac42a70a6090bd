"""Feishu pieces: the official decryption vector, signatures, event parsing, rendering."""

from __future__ import annotations

import json

import pytest
from fake_feishu import BOT_OPEN_ID, GROUP_CHAT_ID, USER_OPEN_ID, bot_mention, encrypt, message_event, signed

from hub.channels.feishu.api import send_error
from hub.channels.feishu.crypto import EventCrypto
from hub.channels.feishu.parse import envelope, parse_message, resource_of
from hub.channels.feishu.render import TEXT_MAX, render
from hub.channels.payload import parse_object as loads
from hub.errors import BadPayload, VerificationFailed
from hub.events import Audio, ChatRef, File, Image, Mention, Message, Text, Unsupported, Video


def test_the_official_decryption_vector() -> None:
    assert EventCrypto("test key").decrypt("P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=") == "hello world"


def test_what_the_fake_encrypts_decrypts() -> None:
    assert EventCrypto("k").decrypt(encrypt('{"a": 1}', "k")) == '{"a": 1}'


@pytest.mark.parametrize("bad", ["", "not base64!", "aGVsbG8=", 5, None, "A" * 64, encrypt("x", "other key")])
def test_what_does_not_decrypt_is_a_bad_payload(bad: object) -> None:
    with pytest.raises(BadPayload):
        EventCrypto("test key").decrypt(bad)


def test_the_signature_covers_timestamp_nonce_key_and_body() -> None:
    crypto = EventCrypto("key")
    body = b'{"encrypt": "abc"}'
    headers = signed(body, "key", timestamp="1700000000", nonce="n1")
    crypto.verify(headers, body)
    with pytest.raises(VerificationFailed) as wrong_body:
        crypto.verify(headers, body + b" ")
    assert wrong_body.value.status == 403
    with pytest.raises(VerificationFailed) as wrong_key:
        EventCrypto("other").verify(headers, body)
    assert wrong_key.value.status == 403
    for name in headers:
        missing = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(VerificationFailed) as exc:
            crypto.verify(missing, body)
        assert exc.value.status == 401


def parse(event: dict[str, object], bot: str | None = BOT_OPEN_ID):  # type: ignore[no-untyped-def]
    return parse_message(envelope(event), bot)


def test_a_private_text() -> None:
    ev = parse(message_event("hello there", message_id="om_1", event_id="ev1"))
    assert ev.id == "ev1" and ev.chat == ChatRef("feishu", "private", USER_OPEN_ID)
    assert str(ev.chat) == f"feishu:private:{USER_OPEN_ID}" and ev.sender.key == f"feishu:{USER_OPEN_ID}"
    assert ev.message.text == "hello there" and not ev.mentions_bot
    assert ev.context["message_id"] == "om_1"


def test_a_group_mention_of_the_bot_is_dropped_from_the_text_and_others_are_kept() -> None:
    other = {"key": "@_user_2", "id": {"open_id": "ou_other"}, "name": "Ann"}
    ev = parse(message_event("@_user_1 ask @_user_2 please", chat_type="group", mentions=[bot_mention(), other]))
    assert str(ev.chat) == f"feishu:group:{GROUP_CHAT_ID}" and ev.mentions_bot
    assert ev.message.segments == (Text("ask "), Mention("ou_other", "Ann"), Text(" please"))
    plain = parse(message_event("hello all", chat_type="group"))
    assert not plain.mentions_bot and not plain.addressed
    # Before the bot knows its own open_id, no mention is taken for it.
    assert not parse(message_event("@_user_1 hi", chat_type="group", mentions=[bot_mention()]), None).mentions_bot


def test_a_thread_message_keeps_its_thread() -> None:
    ev = parse(message_event("in a thread", chat_type="group", thread_id="omt_1a2b"))
    assert str(ev.chat) == f"feishu:group:{GROUP_CHAT_ID}#omt_1a2b"


def test_media_messages_become_segments_to_download_on_demand() -> None:
    image = parse(message_event(message_type="image", content={"image_key": "img_v2_1"}, message_id="om_9"))
    assert image.message.segments == (Image(file_id="om_9:image:img_v2_1"),)
    assert resource_of("om_9:image:img_v2_1") == ("om_9", "image", "img_v2_1")
    file = parse(message_event(message_type="file", content={"file_key": "fk", "file_name": "a.pdf"}, message_id="m"))
    assert file.message.segments == (File(file_id="m:file:fk", name="a.pdf"),)
    audio = parse(message_event(message_type="audio", content={"file_key": "ak", "duration": 2500}, message_id="m"))
    (seg,) = audio.message.segments
    assert isinstance(seg, Audio) and seg.duration == 2.5 and seg.file_id == "m:file:ak"
    video = parse(message_event(message_type="media", content={"file_key": "vk", "image_key": "ik"}, message_id="m"))
    assert isinstance(video.message.segments[0], Video)
    sticker = parse(message_event(message_type="sticker", content={"file_key": "s"}))
    assert isinstance(sticker.message.segments[0], Unsupported)


def test_a_post_is_flattened_to_text_with_its_images() -> None:
    post = {
        "title": "Weekly",
        "content": [
            [
                {"tag": "at", "user_id": "@_user_1", "user_name": BOT_NAME_},
                {"tag": "text", "text": " see "},
                {"tag": "a", "href": "https://x.org", "text": "this"},
            ],
            [{"tag": "img", "image_key": "img_2"}],
            [{"tag": "text", "text": "thanks"}, {"tag": "emotion", "emoji_type": "SMILE"}],
        ],
    }
    ev = parse(
        message_event(message_type="post", content=post, message_id="om_p", chat_type="group", mentions=[bot_mention()])
    )
    assert ev.mentions_bot
    assert ev.message.text == "Weekly\nsee this\n\nthanks"
    assert Image(file_id="om_p:image:img_2") in ev.message.segments


BOT_NAME_ = "HubBot"


@pytest.mark.parametrize(
    "body",
    [
        {"schema": "2.0"},
        {"schema": "2.0", "header": []},
        {"schema": "2.0", "header": {"event_id": 5, "event_type": "im.message.receive_v1"}},
        {"schema": "1.0", "header": {"event_id": "e", "event_type": "t"}},
        {"schema": "2.0", "header": {"event_id": "e" * 500, "event_type": "t"}},
    ],
)
def test_envelopes_of_the_wrong_shape_are_bad_payloads(body: dict[str, object]) -> None:
    with pytest.raises(BadPayload):
        envelope(body)


def test_messages_of_the_wrong_shape_are_bad_payloads() -> None:
    for mutate in (
        lambda e: e["event"].update(message="x"),
        lambda e: e["event"]["message"].update(chat_type="channel"),
        lambda e: e["event"]["message"].update(content=["a"]),
        lambda e: e["event"]["sender"]["sender_id"].update(open_id=None),
    ):
        event = message_event()
        mutate(event)
        with pytest.raises(BadPayload):
            parse(event)
    # Content that is not JSON is kept as unsupported, never an exception.
    event = message_event()
    event["event"]["message"]["content"] = "{not json"  # type: ignore[index]
    assert isinstance(parse(event).message.segments[0], Unsupported)


def test_deep_nesting_is_refused_before_parsing() -> None:
    with pytest.raises(BadPayload):
        loads("[" * 100_000 + "]" * 100_000)
    nested: object = 1
    for _ in range(70):
        nested = [nested]
    with pytest.raises(BadPayload):
        loads(json.dumps({"a": nested}))
    with pytest.raises(BadPayload):
        loads(b'{"text": "\\ud800"}')  # a lone surrogate cannot be stored


def test_render_splits_long_text_and_writes_mentions_as_feishu_at() -> None:
    long = "word " * 20_000
    parts = render(Message.of(long))
    assert len(parts) > 1 and all(len(p.text.encode()) <= TEXT_MAX for p in parts)
    assert " ".join(p.text for p in parts).split() == long.split()
    (part,) = render(Message((Mention("ou_1", "Ann"), Text("hi"))))
    assert part.text == '<at user_id="ou_1">Ann</at> hi'
    kinds = [p.kind for p in render(Message.of("see", Image(url="http://x/a.png", caption="cap"), Video(path="/v")))]
    assert kinds == ["text", "image", "text", "video"]


def test_the_error_mapping() -> None:
    assert send_error("/p", 400, 99991400, "limit", reset_s=7).retry_after == 7
    blocked = send_error("/p", 400, 230002, "Bot/User can NOT be out of the chat.")
    assert not blocked.retryable and blocked.final_for_chat
    assert send_error("/p", 500, 0, "").retryable
    assert not send_error("/p", 400, 230001, "param invalid").retryable
