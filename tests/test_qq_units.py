"""QQ's pieces: REFERENCE.md's ed25519 vectors, literally; parsing; the error mapping; reply slots."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.channels.qq import parse
from hub.channels.qq.api import MediaFetchFailed, ReplyExpired, send_error
from hub.channels.qq.crypto import QQSigner, seed_of
from hub.channels.qq.passive import PassiveReplies
from hub.errors import BadPayload
from hub.events import Audio, ChatRef, File, Image, Text, Video
from hub.storage.db import Database
from hub.storage.migrate import migrate
from hub.storage.reply_slots import ReplySlotRepo

EVENT_BODY = b'{\n  "op": 0,\n  "d": {},\n  "t": "GATEWAY_EVENT_NAME"\n}'
EVENT_SIG = (
    "865ad13a61752ca65e26bde6676459cd36cf1be609375b37bd62af366e1dc25a"
    "8dc789ba7f14e017ada3d554c671a911bfdf075ba54835b23391d509579ed002"
)
OP13_SIG = (
    "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d0"
    "1bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706"
)


def test_public_key_from_the_secret() -> None:
    signer = QQSigner("naOC0ocQE3shWLAfffVLB1rhYPG7")
    assert signer.public_key_hex == "d7c362fe78aef81ff23287b493628b5db02a3c4fe30b215e4d19609b5d76673a"


def test_seed_repeats_the_secret_to_32_bytes() -> None:
    assert seed_of("DG5g3B4j9X2KOErG") == b"DG5g3B4j9X2KOErGDG5g3B4j9X2KOErG"
    assert seed_of("naOC0ocQE3shWLAfffVLB1rhYPG7") == b"naOC0ocQE3shWLAfffVLB1rhYPG7naOC"
    assert len(seed_of("x" * 50)) == 32
    with pytest.raises(ValueError):
        seed_of("")


def test_op13_answer_vector() -> None:
    answer = QQSigner("DG5g3B4j9X2KOErG").validation_answer("Arq0D5A61EgUu4OxUvOp", "1725442341")
    assert answer == {"plain_token": "Arq0D5A61EgUu4OxUvOp", "signature": OP13_SIG}


def test_event_signature_vector() -> None:
    signer = QQSigner("naOC0ocQE3shWLAfffVLB1rhYPG7")
    assert signer.sign(b"1725442341" + EVENT_BODY) == EVENT_SIG
    assert signer.verify(EVENT_SIG, "1725442341", EVENT_BODY)


@pytest.mark.parametrize(
    ("sig", "ts", "body"),
    [
        (EVENT_SIG, "1725442342", EVENT_BODY),  # another timestamp
        (EVENT_SIG, "1725442341", EVENT_BODY + b" "),  # another body
        (EVENT_SIG.upper()[:-2] + "00", "1725442341", EVENT_BODY),  # another signature
        (EVENT_SIG[:-2], "1725442341", EVENT_BODY),  # too short
        ("zz" * 64, "1725442341", EVENT_BODY),  # not hex
        ("", "1725442341", EVENT_BODY),
        (None, "1725442341", EVENT_BODY),
        (EVENT_SIG, None, EVENT_BODY),
        (EVENT_SIG, "1" * 200, EVENT_BODY),
        (EVENT_SIG, "\udcff", EVENT_BODY),  # not encodable
    ],
)
def test_anything_else_does_not_verify(sig: str | None, ts: str | None, body: bytes) -> None:
    assert not QQSigner("naOC0ocQE3shWLAfffVLB1rhYPG7").verify(sig, ts, body)


def test_another_secret_does_not_verify() -> None:
    assert not QQSigner("DG5g3B4j9X2KOErG").verify(EVENT_SIG, "1725442341", EVENT_BODY)


# --- parsing ---------------------------------------------------------------------------------


def _c2c(**d: object) -> bytes:
    base: dict[str, object] = {
        "author": {"user_openid": "E4F4AEA33253A2797FB897C50B81D7ED"},
        "content": " hello ",
        "id": "ROBOT1.0_abc",
        "timestamp": "2023-11-06T13:37:18+08:00",
    }
    base.update(d)
    return json.dumps({"op": 0, "id": "C2C_MESSAGE_CREATE:1", "d": base, "t": "C2C_MESSAGE_CREATE"}).encode()


def test_c2c_message_becomes_a_private_event() -> None:
    now = datetime(2023, 11, 6, 6, 0, tzinfo=UTC)
    ev = parse.message_event(parse.envelope(_c2c()), "qq", now=now)
    assert ev.id == "C2C_MESSAGE_CREATE:1"
    assert ev.chat == ChatRef("qq", "private", "E4F4AEA33253A2797FB897C50B81D7ED")
    assert ev.sender.key == "qq:E4F4AEA33253A2797FB897C50B81D7ED"
    assert ev.message.segments == (Text("hello"),)
    assert ev.context["msg_id"] == "ROBOT1.0_abc" and ev.context["reply_only"] is True
    assert ev.context["msg_at"] == datetime(2023, 11, 6, 5, 37, 18, tzinfo=UTC).timestamp()
    assert not ev.mentions_bot


def test_group_at_message_is_a_mention_in_the_group() -> None:
    body = {
        "op": 0,
        "id": "GROUP_AT_MESSAGE_CREATE:2",
        "t": "GROUP_AT_MESSAGE_CREATE",
        "d": {"author": {"member_openid": "M1"}, "content": " /video cat", "group_openid": "G1", "id": "m2"},
    }
    ev = parse.message_event(parse.envelope(json.dumps(body).encode()), "qq")
    assert str(ev.chat) == "qq:group:G1" and ev.sender.key == "qq:M1"
    assert ev.mentions_bot and ev.addressed and ev.message.text == "/video cat"


def test_attachments_become_media_segments() -> None:
    attachments = [
        {"content_type": "image/jpeg", "filename": "a.jpg", "size": 10, "url": "gchat.qpic.cn/a.jpg"},
        {"content_type": "video/mp4", "filename": "v.mp4", "url": "https://x.example/v.mp4"},
        {"content_type": "voice", "filename": "v.silk", "url": "https://x.example/v.silk"},
        {"content_type": "application/pdf", "filename": "f.pdf", "url": "https://x.example/f.pdf"},
        {"content_type": "image/png"},  # no URL: nothing to show
        "not an attachment",
    ]
    ev = parse.message_event(parse.envelope(_c2c(content="", attachments=attachments)), "qq")
    kinds = [type(s) for s in ev.message.segments]
    assert kinds == [Image, Video, Audio, File]
    image = ev.message.segments[0]
    assert isinstance(image, Image) and image.url == "https://gchat.qpic.cn/a.jpg" and image.size == 10
    voice = ev.message.segments[2]
    assert isinstance(voice, Audio) and voice.voice


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"op"',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"op": "0"}',
        b'{"op": true}',
        b'{"op": 0, "t": 5}',
        b'{"op": 0, "id": 5}',
        b'{"op": 0, "id": "' + b"x" * 300 + b'"}',
    ],
)
def test_bad_envelopes_are_bad_payloads(body: bytes) -> None:
    with pytest.raises(BadPayload):
        parse.envelope(body)


@pytest.mark.parametrize(
    "d",
    [
        {"author": "x", "id": "m", "content": "hi"},
        {"author": {"user_openid": 5}, "id": "m", "content": "hi"},
        {"author": {"user_openid": "u"}, "id": ["m"], "content": "hi"},
        {"author": {"user_openid": "u"}, "id": "m", "content": {"text": "hi"}},
        {"author": {"user_openid": "u"}, "id": "m", "content": "x" * 100_000},
        {"author": {"user_openid": "u"}, "id": "m", "content": "hi", "attachments": {"url": "x"}},
    ],
)
def test_wrong_types_are_bad_payloads(d: dict[str, object]) -> None:
    env = parse.Envelope("e1", 0, parse.C2C, d)
    with pytest.raises(BadPayload):
        parse.message_event(env, "qq")


def test_validation_needs_strings() -> None:
    with pytest.raises(BadPayload):
        parse.validation(parse.Envelope(None, 13, None, {"plain_token": 1, "event_ts": "1"}))
    with pytest.raises(BadPayload):
        parse.validation(parse.Envelope(None, 13, None, []))


# --- the error mapping -----------------------------------------------------------------------


@pytest.mark.parametrize("code", [40034105, 40054005, 40034128])
def test_request_bugs_are_final_and_logged(code: int, caplog: pytest.LogCaptureFixture) -> None:
    err = send_error("/v2/users/u/messages", 400, code, "bad")
    assert not err.retryable
    assert "qq_bug" in caplog.text


def test_quota_and_rate_limits_wait() -> None:
    quota = send_error("/p", 200, 22009, "quota")
    assert quota.retryable and quota.retry_after == 60.0
    limited = send_error("/p", 429, 0, "slow down", retry_after=7.0)
    assert limited.retryable and limited.retry_after == 7.0
    assert send_error("/p", 400, 429, "").retryable


@pytest.mark.parametrize("code", [304082, 304083])
def test_media_fetch_failures_fall_back_to_a_link(code: int) -> None:
    assert isinstance(send_error("/p", 400, code, "download failed"), MediaFetchFailed)


def test_server_errors_retry_and_other_refusals_are_final() -> None:
    assert send_error("/p", 502, 0, "").retryable
    assert not send_error("/p", 400, 11111, "nope").retryable


# --- reply slots -----------------------------------------------------------------------------


@pytest.fixture
async def slots(tmp_path: Path) -> AsyncIterator[ReplySlotRepo]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'slots.db'}")
    await migrate(db)
    yield ReplySlotRepo(db)
    await db.close()


async def test_five_replies_per_message_then_none(slots: ReplySlotRepo) -> None:
    now = datetime.now(UTC)
    await slots.open("m1", "qq:private:u", now, now + timedelta(minutes=60))
    taken = await asyncio.gather(*(slots.take("m1", "qq:private:u") for _ in range(7)))
    seqs = sorted(s.seq for s in taken if s is not None)
    assert seqs == [1, 2, 3, 4, 5]  # the sixth and seventh get none
    assert await slots.take("m1", "qq:private:other") is None  # a msg_id answers its own chat only


async def test_a_closed_window_gives_none_and_the_newest_open_message_is_used(slots: ReplySlotRepo) -> None:
    now = datetime.now(UTC)
    await slots.open("old", "qq:group:g", now - timedelta(minutes=10), now - timedelta(minutes=5))
    assert await slots.take("old", "qq:group:g") is None
    assert await slots.take_latest("qq:group:g") is None
    await slots.open("new", "qq:group:g", now, now + timedelta(minutes=5))
    slot = await slots.take_latest("qq:group:g")
    assert slot is not None and (slot.msg_id, slot.seq) == ("new", 1)


async def test_windows_are_injectable_and_kept_clear_of_the_edge(slots: ReplySlotRepo) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    default = PassiveReplies(slots)
    assert default.closes_at("private", at) == at + timedelta(minutes=60) - timedelta(seconds=20)
    assert default.closes_at("group", at) == at + timedelta(minutes=5) - timedelta(seconds=20)
    short = PassiveReplies(slots, {"private": 2.0})
    assert short.closes_at("private", at) == at + timedelta(seconds=1.8)


async def test_take_opens_a_missing_row_from_the_context(slots: ReplySlotRepo) -> None:
    passive = PassiveReplies(slots)
    target = ChatRef("qq", "private", "u")
    fresh = {"msg_id": "m9", "msg_at": datetime.now(UTC).timestamp()}
    slot = await passive.take(target, fresh)
    assert slot is not None and slot.seq == 1
    stale = {"msg_id": "m10", "msg_at": (datetime.now(UTC) - timedelta(hours=2)).timestamp()}
    slot = await passive.take(target, stale)
    assert slot is not None and slot.msg_id == "m9"  # its own window closed: the newest open one
    assert await passive.take(ChatRef("qq", "private", "v"), {}) is None  # nothing to answer


def test_an_expired_msg_id_is_not_final() -> None:
    for err in (
        send_error("/p", 400, 40034024, "请求参数msg_id无效或越权"),
        send_error("/p", 400, 11111, "回复消息msg_id已过期"),
    ):
        assert isinstance(err, ReplyExpired) and err.retryable
