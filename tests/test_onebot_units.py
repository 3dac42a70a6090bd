"""OneBot v11 pieces: CQ codes and escapes, events to Events, action answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_onebot import at, group_message, private_message, reply, text

from hub.channels.base import SendRequest
from hub.channels.onebot.actions import check_answer, send_action
from hub.channels.onebot.connections import Connection
from hub.channels.onebot.cqcode import escape, parse_cq, parse_message, to_cq, unescape
from hub.channels.onebot.parse import Ignored, parse_event
from hub.channels.onebot.render import Renderer
from hub.channels.payload import parse_object as load_json
from hub.errors import BadPayload, SendError
from hub.events import Audio, ChatRef, Event, File, Image, Mention, Message, Quote, Text, Unsupported, Video
from hub.i18n.language import ChatLanguages
from hub.storage.chats import ChatSettings


def never(self_id: str, message_id: str) -> bool:
    return False


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("&amp;", "&"),
        ("&#91;&#93;&#44;", "[],"),
        ("&amp;#91;", "&#91;"),  # one pass: an escaped escape stays an escape
        ("a &b; [c]", "a &b; [c]"),
    ],
)
def test_unescape(raw: str, plain: str) -> None:
    assert unescape(raw) == plain


def test_escape_round_trips_through_a_cq_string() -> None:
    tricky = "[CQ:at,qq=1] & , ]["
    assert escape(tricky) == "&#91;CQ:at,qq=1&#93; &amp; , &#93;&#91;"
    assert escape("a,b", param=True) == "a&#44;b"
    cq = to_cq([{"type": "text", "data": {"text": tricky}}, {"type": "image", "data": {"file": "a,b]&c"}}])
    assert cq == "&#91;CQ:at,qq=1&#93; &amp; , &#93;&#91;[CQ:image,file=a&#44;b&#93;&amp;c]"
    assert parse_cq(cq) == [("text", {"text": tricky}), ("image", {"file": "a,b]&c"})]


def test_cq_string_with_segments_and_text() -> None:
    raw = "[CQ:reply,id=123][CQ:at,qq=10001] 看看 &#91;这个&#93;[CQ:image,file=abc.jpg,url=https://x/y?a=1&amp;b=2]"
    assert parse_cq(raw) == [
        ("reply", {"id": "123"}),
        ("at", {"qq": "10001"}),
        ("text", {"text": " 看看 [这个]"}),
        ("image", {"file": "abc.jpg", "url": "https://x/y?a=1&b=2"}),
    ]


@pytest.mark.parametrize(
    "raw",
    ["[CQ:at,qq=1", "[CQ:]", "[CQ:at,qq]", "[CQ:bad type]", "[CQ:at,=1]", "[[CQ:", "]]]", "[CQ:" * 1000],
)
def test_bad_cq_codes_are_text(raw: str) -> None:
    segs = parse_cq(raw)
    assert all(kind == "text" for kind, _ in segs)
    assert "".join(d["text"] for _, d in segs) == unescape(raw)


def test_the_array_form_skips_what_is_not_a_segment() -> None:
    items: list[Any] = [text("a"), "x", 1, None, {"type": 5}, {"type": "at", "data": []}, {"type": "face"}, at(1)]
    assert parse_message(items) == [("text", {"text": "a"}), ("face", {}), ("at", {"qq": "1"})]
    assert parse_message(42) == []
    assert parse_message({"type": "text", "data": {"text": "lone"}}) == [("text", {"text": "lone"})]


def test_a_group_message_with_mention_reply_and_media() -> None:
    message = [
        reply(77),
        at(10001),
        text(" look"),
        {"type": "image", "data": {"file": "abc.image", "url": "https://multimedia.nt.qq.com.cn/i?x=1"}},
        {"type": "record", "data": {"file": "v.amr", "url": "https://example.com/v.silk"}},
        {"type": "video", "data": {"file": "https://example.com/v.mp4"}},
        {"type": "face", "data": {"id": "14"}},
    ]
    event = parse_event(group_message("10001", 555, 20001, message, 9, role="admin"), lambda s, m: m == "77")
    assert isinstance(event, Event)
    assert (event.id, str(event.chat), event.sender.key) == ("10001/9", "onebot:group:10001/555", "onebot:20001")
    assert event.mentions_bot and event.reply_to == "77" and event.reply_to_bot and event.addressed
    assert event.context == {"self_id": "10001", "group_role": "admin"}
    segs = event.message.segments
    assert segs[:3] == (Quote("77"), Mention("10001"), Text(" look"))
    assert isinstance(segs[3], Image) and segs[3].url == "https://multimedia.nt.qq.com.cn/i?x=1"
    assert isinstance(segs[4], Audio) and segs[4].voice and segs[4].url == "https://example.com/v.silk"
    assert isinstance(segs[5], Video) and segs[5].url == "https://example.com/v.mp4"
    assert segs[6] == Unsupported("face", "[face 14]")
    assert event.message.text == "look"


def test_group_text_without_a_mention_is_not_addressed() -> None:
    event = parse_event(group_message("10001", 555, 20001, [at(10002), text("hi")], 9), never)
    assert isinstance(event, Event) and not event.addressed
    ChatRef.parse(str(event.chat))


def test_what_is_not_a_message_is_ignored() -> None:
    meta = {"post_type": "meta_event", "meta_event_type": "heartbeat", "self_id": 1}
    assert isinstance(parse_event(meta, never), Ignored)
    own = parse_event({**private_message("1", 2, "x", 5), "post_type": "message_sent"}, never)
    assert own == Ignored("own message", "1", "5")
    assert isinstance(parse_event(private_message("1", 1, "me", 6), never), Ignored)


@pytest.mark.parametrize(
    "patch",
    [
        {"self_id": "abc"},
        {"self_id": None},
        {"self_id": True},
        {"user_id": {"x": 1}},
        {"user_id": -5},
        {"message_id": [1]},
        {"message_id": "a/b"},
        {"user_id": "1" * 40},
    ],
)
def test_malformed_message_events_are_bad_payloads(patch: dict[str, Any]) -> None:
    with pytest.raises(BadPayload):
        parse_event({**private_message("1", 2, "x", 5), **patch}, never)


def test_load_json_refuses_deep_nesting_and_non_objects() -> None:
    for body in (b"[" * 100000 + b"]" * 100000, b"[1]", b"\xff", b"{"):
        with pytest.raises(BadPayload):
            load_json(body)


def test_answers_map_to_send_errors() -> None:
    assert check_answer("a", {"status": "ok", "retcode": 0, "data": {"message_id": 5}}) == {"message_id": 5}
    assert check_answer("a", {"status": "async", "retcode": 1, "data": None}) == {}
    for retcode, retryable in ((1400, False), (1404, False), (100, True), (200, True)):
        with pytest.raises(SendError) as err:
            check_answer("a", {"status": "failed", "retcode": retcode, "wording": "no"})
        assert err.value.retryable is retryable
    with pytest.raises(SendError):
        check_answer("a", "not an object")


def test_send_actions_by_chat_kind() -> None:
    msg = [{"type": "text", "data": {"text": "x"}}]
    assert send_action(ChatRef("onebot", "group", "1/22"), msg) == (
        "1",
        "send_group_msg",
        {"group_id": 22, "message": msg},
    )
    assert send_action(ChatRef("onebot", "private", "1/33"), msg)[1:] == (
        "send_private_msg",
        {"user_id": 33, "message": msg},
    )
    with pytest.raises(SendError):
        send_action(ChatRef("onebot", "private", "33"), msg)


class _InstantWs:
    """A socket whose answer arrives while the frame is still being sent."""

    def __init__(self, answer: bool = True) -> None:
        self.conn: Connection | None = None
        self.answer = answer

    async def send_str(self, frame: str) -> None:
        echo = json.loads(frame)["echo"]
        if self.answer and self.conn is not None:
            self.conn.answer({"status": "ok", "retcode": 0, "data": {"message_id": 1}, "echo": echo})


async def test_an_answer_that_comes_at_once_is_not_missed_and_waiters_are_cleaned_up() -> None:
    ws = _InstantWs()
    conn = Connection("1", ws)  # type: ignore[arg-type]
    ws.conn = conn
    answer = await conn.call("send_private_msg", {}, wait_s=5)
    assert answer["data"] == {"message_id": 1}
    ws.answer = False
    with pytest.raises(SendError) as err:
        await conn.call("send_private_msg", {}, wait_s=0.01)
    assert err.value.retryable and "no answer" in str(err.value)
    assert conn._waiters == {}
    assert not conn.answer({"echo": "other:1"})
    conn.fail_all()
    with pytest.raises(SendError):
        await conn.call("send_private_msg", {}, wait_s=5)


@pytest.mark.parametrize(
    ("chosen", "note"),
    [
        (None, "这个文件太大，无法在这里发送。\n也无法提供链接：请让运行本机器人的人设置 [http] public_url。"),
        (
            "en",
            "This file is too large to send here.\n"
            "There is no link to it either: ask whoever runs this hub to set [http] public_url.",
        ),
    ],
)
async def test_media_too_large_to_inline_without_a_link_is_a_note_in_the_chats_language(
    chosen: str | None, note: str
) -> None:
    async def chat(ref: str) -> ChatSettings:
        return ChatSettings(ref, language=chosen)

    async def no_persona(settings: ChatSettings) -> str | None:
        return None

    languages = ChatLanguages(chats=chat, persona_language=no_persona, bot="auto")
    # No public address and more than base64_max: neither a link nor a payload.
    renderer = Renderer(None, None, text_max=1000, base64_max=4, languages=languages)  # type: ignore[arg-type]
    message = Message.of(File(data=b"%PDF-1.4", name="doc.pdf"))
    request = SendRequest(ChatRef("onebot", "private", "10001/20002"), message)
    assert await renderer.render(message, None, request) == [[{"type": "text", "data": {"text": note}}]]
