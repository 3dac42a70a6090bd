"""Feishu end to end (webhook mode): encrypted, signed events into the real app; calls out to the fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_feishu import (
    BOT_OPEN_ID,
    ENCRYPT_KEY,
    GROUP_CHAT_ID,
    USER_OPEN_ID,
    VERIFICATION_TOKEN,
    FakeFeishu,
    bot_mention,
    encrypt,
    encrypted_body,
    feishu_toml,
    message_event,
    post_event,
    post_signed,
    signed,
)
from harness import RunningHub, eventually, make_settings, running_hub

from hub.channels.feishu import FeishuChannel
from hub.events import Image
from hub.i18n import texts
from hub.routing.context import Context
from hub.skills.chat import NO_MODEL


@pytest.fixture
async def fs() -> AsyncIterator[FakeFeishu]:
    fake = FakeFeishu()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(tmp_path: Path, fs: FakeFeishu) -> AsyncIterator[RunningHub]:
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url, public_url="https://hub.example.org"))) as h:
        yield h


def channel(h: RunningHub) -> FeishuChannel:
    ch = h.hub.channels["feishu"]
    assert isinstance(ch, FeishuChannel)
    return ch


async def handled(h: RunningHub, event: dict[str, Any]) -> None:
    async def done() -> bool:
        row = await h.hub.inbox.get("feishu", event["header"]["event_id"])
        return row is not None and row["status"] == "done"

    await eventually(done)


async def test_start_learns_the_bot_open_id(hub: RunningHub, fs: FakeFeishu) -> None:
    assert channel(hub).bot_open_id == BOT_OPEN_ID
    assert len(fs.of("/tenant_access_token/internal")) == 1 and fs.of("/bot/v3/info")


async def test_an_encrypted_signed_private_message_is_acked_before_the_answer_and_answered_once(
    hub: RunningHub, fs: FakeFeishu
) -> None:
    fs.hold("messages")  # the answer cannot go out: the ack must not wait for it
    event = message_event("hello there")
    status, body = await post_signed(hub.url, event)
    assert (status, body) == (200, {})
    await fs.wait_for(lambda: len(fs.of("/im/v1/messages")) == 1)
    assert fs.messages() == []
    fs.release()
    await fs.wait_for(lambda: len(fs.messages()) == 1)
    (sent,) = fs.messages()
    assert sent.path == "/open-apis/im/v1/messages" and sent.query == {"receive_id_type": "open_id"}
    assert sent.json["receive_id"] == USER_OPEN_ID and sent.json["msg_type"] == "text"
    assert sent.content == {"text": texts("zh")(NO_MODEL)}  # Feishu chats are Chinese
    row = await hub.hub.inbox.get("feishu", event["header"]["event_id"])
    assert row is not None and row["chat"] == f"feishu:private:{USER_OPEN_ID}"
    await handled(hub, event)
    await asyncio.sleep(0.5)
    assert len(fs.messages()) == 1


async def test_a_group_message_needs_an_mention_and_the_answer_replies_to_it(hub: RunningHub, fs: FakeFeishu) -> None:
    plain = message_event("hello all", chat_type="group")
    assert (await post_signed(hub.url, plain))[0] == 200
    await handled(hub, plain)
    assert fs.messages() == []

    asked = message_event("@_user_1 hi bot", chat_type="group", mentions=[bot_mention()], message_id="om_ask1")
    assert (await post_signed(hub.url, asked))[0] == 200
    await fs.wait_for(lambda: len(fs.messages()) == 1)
    (reply,) = fs.messages()
    assert reply.path == "/open-apis/im/v1/messages/om_ask1/reply"
    assert reply.content == {"text": texts("zh")(NO_MODEL)} and not reply.json.get("reply_in_thread")


async def test_a_group_reply_to_the_bots_message_is_for_the_bot(hub: RunningHub, fs: FakeFeishu) -> None:
    asked = message_event("@_user_1 /help", chat_type="group", mentions=[bot_mention()])
    await post_signed(hub.url, asked)
    await fs.wait_for(lambda: len(fs.messages()) == 1)
    await handled(hub, asked)
    bots = message_event("and then?", chat_type="group")
    bots["event"]["message"]["parent_id"] = "om_000001"  # the fake's id of the bot's answer
    others = message_event("and then?", chat_type="group")
    others["event"]["message"]["parent_id"] = "om_someone_else"
    for event in (others, bots):
        await post_signed(hub.url, event)
        await handled(hub, event)
    await fs.wait_for(lambda: len(fs.messages()) == 2)
    assert fs.messages()[1].path.endswith(f"/{bots['event']['message']['message_id']}/reply")
    row = await hub.hub.inbox.get("feishu", bots["header"]["event_id"])
    assert row is not None and row["payload"]["reply_to_bot"] is True


async def test_a_reply_in_a_thread_stays_in_the_thread(hub: RunningHub, fs: FakeFeishu) -> None:
    asked = message_event(
        "@_user_1 /help", chat_type="group", mentions=[bot_mention()], message_id="om_t1", thread_id="omt_77"
    )
    await post_signed(hub.url, asked)
    await fs.wait_for(lambda: len(fs.messages()) >= 1)
    reply = fs.messages()[0]
    assert reply.path == "/open-apis/im/v1/messages/om_t1/reply" and reply.json["reply_in_thread"] is True
    row = await hub.hub.inbox.get("feishu", asked["header"]["event_id"])
    assert row is not None and row["chat"] == f"feishu:group:{GROUP_CHAT_ID}#omt_77"


async def test_a_forged_or_missing_signature_is_refused_and_never_processed(hub: RunningHub, fs: FakeFeishu) -> None:
    event = message_event("forged")
    body = encrypted_body(event)
    forged = {**signed(body), "X-Lark-Signature": "0" * 64}
    assert (await post_event(hub.url, body, forged))[0] == 403
    assert (await post_event(hub.url, body, signed(body, "another key")))[0] == 403
    assert (await post_event(hub.url, body))[0] == 401
    assert (await post_event(hub.url, body + b" ", signed(body)))[0] == 403  # the signature covers the body
    # A plaintext event needs the signature as much as an encrypted one.
    plain = json.dumps(event).encode()
    assert (await post_event(hub.url, plain))[0] == 401
    assert (await post_event(hub.url, plain, signed(plain, "another key")))[0] == 403
    await asyncio.sleep(0.3)
    assert await hub.hub.inbox.get("feishu", event["header"]["event_id"]) is None
    assert fs.messages() == []


async def test_a_signed_plaintext_event_is_taken(hub: RunningHub, fs: FakeFeishu) -> None:
    plain = json.dumps(message_event("/help")).encode()
    assert (await post_event(hub.url, plain, signed(plain)))[0] == 200
    await fs.wait_for(lambda: len(fs.messages()) == 1)


async def test_one_event_id_delivered_three_times_gives_one_reply(hub: RunningHub, fs: FakeFeishu) -> None:
    event = message_event("/help")
    results = [await post_signed(hub.url, event) for _ in range(3)]
    assert [r[0] for r in results] == [200, 200, 200]
    await handled(hub, event)
    await fs.wait_for(lambda: len(fs.messages()) >= 1)
    await asyncio.sleep(0.5)
    assert len(fs.messages()) == 1


async def test_the_challenge_is_answered_after_checking_its_token(hub: RunningHub) -> None:
    check = {"challenge": "ajls384kdjx98XX", "token": VERIFICATION_TOKEN, "type": "url_verification"}
    body = json.dumps({"encrypt": encrypt(json.dumps(check))}).encode()
    assert await post_event(hub.url, body) == (200, {"challenge": "ajls384kdjx98XX"})
    wrong = json.dumps({"encrypt": encrypt(json.dumps({**check, "token": "nope"}))}).encode()
    assert (await post_event(hub.url, wrong))[0] == 403
    other_key = json.dumps({"encrypt": encrypt(json.dumps(check), "other key")}).encode()
    assert (await post_event(hub.url, other_key))[0] == 400


async def test_plain_mode_checks_the_verification_token(tmp_path: Path, fs: FakeFeishu) -> None:
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url, encrypt_key=None))) as h:
        check = {"challenge": "c1", "token": VERIFICATION_TOKEN, "type": "url_verification"}
        assert await post_event(h.url, json.dumps(check).encode()) == (200, {"challenge": "c1"})
        event = message_event("/help")
        assert (await post_event(h.url, json.dumps(event).encode()))[0] == 200
        forged = message_event("/help")
        forged["header"]["token"] = "guess"
        assert (await post_event(h.url, json.dumps(forged).encode()))[0] == 403
        await fs.wait_for(lambda: len(fs.messages()) == 1)
        assert await h.hub.inbox.get("feishu", forged["header"]["event_id"]) is None


async def test_long_text_is_split_and_the_rate_limit_is_waited_out(hub: RunningHub, fs: FakeFeishu) -> None:
    long = "lorem ipsum " * 6000  # 72 KB: three messages
    fs.rate_limit("/im/v1/messages", 1, reset_s=1)

    async def essay(ctx: Context) -> None:
        await ctx.reply(long)

    hub.hub.router.register("essay", essay, description="a long answer")
    await post_signed(hub.url, message_event("/essay"))
    await fs.wait_for(lambda: len(fs.messages()) == 3)
    limited = [c for c in fs.of("/im/v1/messages") if not c.answered]
    assert len(limited) == 1
    texts = [c.content["text"] for c in fs.messages()]
    assert " ".join(texts).split() == long.split()
    assert all(len(t.encode()) <= 30 * 1024 for t in texts)


async def test_a_refused_token_is_refreshed_once(hub: RunningHub, fs: FakeFeishu) -> None:
    fs.revoke_tokens()
    await post_signed(hub.url, message_event("/help"))
    await fs.wait_for(lambda: len(fs.messages()) == 1)
    assert len(fs.of("/tenant_access_token/internal")) == 2


async def test_the_token_is_refreshed_ahead_of_its_expiry(tmp_path: Path, fs: FakeFeishu) -> None:
    fs.token_expire_s = 3  # refreshed a tenth of its life early
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url))) as h:
        await post_signed(h.url, message_event("/help"))
        await fs.wait_for(lambda: len(fs.messages()) == 1)
        assert len(fs.of("/tenant_access_token/internal")) == 1
        await asyncio.sleep(3.0)
        await post_signed(h.url, message_event("/help"))
        await fs.wait_for(lambda: len(fs.messages()) == 2)
        assert len(fs.of("/tenant_access_token/internal")) == 2
        assert not [c for c in fs.calls if c.path.startswith("/open-apis/im") and not c.answered]


async def test_a_sent_image_can_be_downloaded_on_demand(hub: RunningHub, fs: FakeFeishu) -> None:
    fs.resources[("om_img1", "img_v2_abc")] = b"\x89PNG fake"
    event = message_event(message_type="image", content={"image_key": "img_v2_abc"}, message_id="om_img1")
    await post_signed(hub.url, event)
    row = await hub.hub.inbox.get("feishu", event["header"]["event_id"])
    assert row is not None
    (seg,) = row["payload"]["message"]
    assert seg == {"type": "image", "file_id": "om_img1:image:img_v2_abc"}
    stored = await channel(hub).fetch_media(seg["file_id"], name="a.png")
    assert stored.path.read_bytes() == b"\x89PNG fake"
    (download,) = fs.of("/resources/img_v2_abc")
    assert download.query == {"type": "image"}


async def test_media_goes_out_uploaded_or_as_a_link(hub: RunningHub, fs: FakeFeishu, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (31 * 1024 * 1024))

    async def media(ctx: Context) -> None:
        from hub.events import Audio, File, Message

        await ctx.reply(
            Message.of(
                Image(data=b"\x89PNG img", name="a.png", mime="image/png"),
                Audio(data=b"OggS opus", name="v.opus", mime="audio/opus"),
                File(data=b"%PDF-1.4", name="doc.pdf", mime="application/pdf"),
                File(path=str(big), name="big.bin"),
            )
        )

    hub.hub.router.register("media", media, description="media")
    await post_signed(hub.url, message_event("/media"))
    await fs.wait_for(lambda: len(fs.messages()) == 4, timeout=30)
    kinds = [(c.json["msg_type"], c.content) for c in fs.messages()]
    assert kinds[0][0] == "image" and kinds[0][1]["image_key"] in fs.uploads
    assert kinds[1][0] == "audio" and fs.uploads[kinds[1][1]["file_key"]]["file_type"] == "opus"
    assert kinds[2][0] == "file" and fs.uploads[kinds[2][1]["file_key"]]["file_type"] == "pdf"
    assert kinds[3][0] == "text" and "https://hub.example.org/media/" in kinds[3][1]["text"]


async def test_hostile_bodies_get_4xx_never_500(hub: RunningHub) -> None:
    def enc(obj: Any) -> bytes:
        return encrypted_body(obj) if isinstance(obj, dict) else json.dumps({"encrypt": encrypt(obj)}).encode()

    deep = "[" * 50_000 + "]" * 50_000
    event = message_event("x")
    wrong_types = [
        {**event, "header": "no"},
        {**event, "event": {"message": {"chat_type": 1}}},
        {**event, "event": {"sender": [], "message": event["event"]["message"]}},
        {**event, "header": {**event["header"], "event_id": {"a": 1}}},
        {**event, "schema": 2},
    ]
    bodies = [
        b"",
        b"not json",
        b"[]",
        b'{"encrypt": 5}',
        b'{"encrypt": "' + b"A" * 600_000 + b'"}',
        deep.encode(),
        json.dumps({"encrypt": encrypt(deep)}).encode(),
        json.dumps({"encrypt": encrypt("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"))}).encode(),
        b"x" * (2 * 1024 * 1024),
        *(enc(w) for w in wrong_types),
    ]
    for body in bodies:
        status, _ = await post_event(hub.url, body, signed(body))
        assert 400 <= status < 500, (status, body[:60])
    # The hub still works.
    assert (await post_signed(hub.url, message_event("/help")))[0] == 200


async def test_the_route_is_absent_in_websocket_mode(tmp_path: Path, fs: FakeFeishu) -> None:
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url, mode="websocket"))) as h:
        assert (await post_signed(h.url, message_event()))[0] == 404


async def test_an_unknown_event_type_is_acked_and_dropped(hub: RunningHub, fs: FakeFeishu) -> None:
    event = message_event()
    event["header"]["event_type"] = "im.chat.member.bot.added_v1"
    event["event"] = {"chat_id": GROUP_CHAT_ID}
    assert (await post_signed(hub.url, event))[0] == 200
    assert await hub.hub.inbox.get("feishu", event["header"]["event_id"]) is None
    assert ENCRYPT_KEY  # the default fixture runs encrypted


async def test_the_delivery_api_sends_to_a_feishu_group(tmp_path: Path, fs: FakeFeishu) -> None:
    toml = '[api]\ntoken = "api-token-0123456789"\n' + feishu_toml(fs.url)
    async with running_hub(make_settings(tmp_path, toml)) as h:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{h.url}/api/v1/messages",
                json={"to": f"feishu:group:{GROUP_CHAT_ID}", "text": "the build is green"},
                headers={"Authorization": "Bearer api-token-0123456789"},
            ) as resp:
                assert resp.status == 202, await resp.text()
        await fs.wait_for(lambda: len(fs.messages()) == 1)
        (sent,) = fs.messages()
        assert sent.query == {"receive_id_type": "chat_id"} and sent.json["receive_id"] == GROUP_CHAT_ID
        assert sent.content == {"text": "the build is green"} and "uuid" not in sent.json


async def test_admin_is_refused_over_an_unsigned_webhook(tmp_path: Path, fs: FakeFeishu) -> None:
    # Without an encrypt_key the body is not signed (its verification token travels inside it).
    toml = f'admins = ["feishu:{USER_OPEN_ID}"]\n' + feishu_toml(fs.url, encrypt_key=None)
    async with running_hub(make_settings(tmp_path, toml)) as h:
        assert (await post_event(h.url, json.dumps(message_event("/admin status")).encode()))[0] == 200
        await fs.wait_for(lambda: len(fs.messages()) == 1)
        text = fs.messages()[0].content["text"]
        # Feishu is a Chinese platform: the refusal, and what to do, in Chinese.
        assert "不接受管理命令" in text and "[feishu] encrypt_key" in text and "渠道：" not in text
