"""The QQ channel end to end: signed webhooks in over real HTTP, passive replies out to a fake
QQ API (token host and bot API), the rows in the database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_providers import PNG_1X1
from fake_qq import APP_ID, APP_SECRET, GROUP, USER, FakeQQ, post, signed_headers
from harness import RunningHub, eventually, make_settings, running_hub
from sqlalchemy import func, select

from hub.errors import ConfigError
from hub.events import ChatRef, Image, Message, Video
from hub.settings import Settings
from hub.storage.models import inbox
from hub.storage.outbox import NewMessage

PUBLIC = "https://hub.example.com"
CHAT = ChatRef("qq", "private", USER)


def qq_settings(tmp_path: Path, qq: FakeQQ, extra: str = "", *, secret: str = APP_SECRET) -> Settings:
    return make_settings(
        tmp_path,
        f"""
[qq]
enabled = true
app_id = "{APP_ID}"
app_secret = "{secret}"
api_base = "{qq.api.url}"
token_base = "{qq.tokens.url}"
{extra}
""",
    )


@pytest.fixture
async def qq() -> AsyncIterator[FakeQQ]:
    fake = FakeQQ()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(tmp_path: Path, qq: FakeQQ) -> AsyncIterator[RunningHub]:
    async with running_hub(qq_settings(tmp_path, qq)) as running:
        yield running


async def inbox_count(hub: RunningHub) -> int:
    async with hub.hub.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(inbox))).scalar_one())


async def test_c2c_message_is_answered_once_with_msg_id_and_seq(hub: RunningHub, qq: FakeQQ) -> None:
    payload = qq.c2c("hello")
    status, answer = await post(hub.url, payload)
    assert (status, answer) == (200, {"op": 12, "d": 0})
    await qq.api.wait_for(lambda: len(qq.sent) >= 1)
    reply = qq.sent[0]
    assert reply.chat == f"private:{USER}"
    assert reply.body["msg_id"] == payload["d"]["id"]
    assert reply.body["msg_seq"] == 1 and reply.body["msg_type"] == 0
    assert "model" in reply.content.lower()  # no model configured: the notice says so
    auth = qq.api.calls(f"/v2/users/{USER}/messages")[0].headers["Authorization"]
    assert auth.startswith("QQBot ") and auth[6:] in qq.valid_tokens
    await asyncio.sleep(0.3)
    assert len(qq.sent) == 1 and not qq.refused


async def test_group_at_message_is_answered_in_the_group(hub: RunningHub, qq: FakeQQ) -> None:
    payload = qq.group_at(" /help")
    status, _ = await post(hub.url, payload)
    assert status == 200
    await qq.api.wait_for(lambda: len(qq.sent) >= 1)
    reply = qq.sent[0]
    assert reply.chat == f"group:{GROUP}"
    assert reply.body["msg_id"] == payload["d"]["id"] and reply.body["msg_seq"] == 1
    assert "/video" in reply.content
    rows = await hub.hub.outbox_repo.all_rows()
    assert [r["target"] for r in rows] == [f"qq:group:{GROUP}"]


async def test_the_same_event_three_times_is_answered_once(hub: RunningHub, qq: FakeQQ) -> None:
    payload = qq.c2c("once please")
    answers = await asyncio.gather(*(post(hub.url, payload) for _ in range(3)))
    assert all(a == (200, {"op": 12, "d": 0}) for a in answers)
    await post(hub.url, payload)
    await qq.api.wait_for(lambda: len(qq.sent) >= 1)
    await asyncio.sleep(0.5)
    assert len(qq.sent) == 1
    assert await inbox_count(hub) == 1


async def test_token_is_fetched_once_and_reused(hub: RunningHub, qq: FakeQQ) -> None:
    for n in range(3):
        await post(hub.url, qq.c2c(f"message {n}"))
    await qq.api.wait_for(lambda: len(qq.sent) >= 3)
    assert qq.token_fetches() == 1
    body = qq.tokens.calls("/app/getAppAccessToken")[0].json
    assert body == {"appId": APP_ID, "clientSecret": APP_SECRET}


async def test_url_check_is_answered_with_the_reference_signature(tmp_path: Path, qq: FakeQQ) -> None:
    # REFERENCE.md's op 13 vector, literally: secret, event_ts, plain_token and signature.
    settings = qq_settings(tmp_path, qq, secret="DG5g3B4j9X2KOErG")
    check = {"op": 13, "d": {"plain_token": "Arq0D5A61EgUu4OxUvOp", "event_ts": "1725442341"}}
    body = json.dumps(check).encode()
    async with running_hub(settings) as running:
        status, answer = await post(
            running.url, body, sign=False, headers=signed_headers(body, secret="DG5g3B4j9X2KOErG")
        )
        assert status == 200
        assert answer == {
            "plain_token": "Arq0D5A61EgUu4OxUvOp",
            "signature": "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d0"
            "1bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706",
        }
        # The same check signed with the bot's other secret is refused: nothing is signed.
        status, answer = await post(running.url, body)
        assert status == 403 and "signature" not in answer


async def test_forged_and_unsigned_requests_are_refused_and_not_processed(hub: RunningHub, qq: FakeQQ) -> None:
    check = {"op": 13, "d": {"plain_token": "forged", "event_ts": "1725442341"}}
    message = qq.c2c("forged hello")
    for payload in (check, message):
        body = json.dumps(payload).encode()
        # Unsigned.
        status, answer = await post(hub.url, body, sign=False)
        assert status == 401 and "signature" not in json.dumps(answer)
        # Signed with another secret.
        status, answer = await post(hub.url, body, sign=False, headers=signed_headers(body, secret="not-the-secret"))
        assert status == 403 and "plain_token" not in json.dumps(answer)
        # A real signature of another body.
        other = signed_headers(b'{"op": 0}')
        status, _ = await post(hub.url, body, sign=False, headers=other)
        assert status == 403
        # A real signature over another timestamp.
        headers = signed_headers(body)
        headers["X-Signature-Timestamp"] = str(int(headers["X-Signature-Timestamp"]) + 1)
        status, _ = await post(hub.url, body, sign=False, headers=headers)
        assert status == 403
        # Garbage in the signature header.
        status, _ = await post(hub.url, body, sign=False, headers={**signed_headers(body), "X-Signature-Ed25519": "zz"})
        assert status == 403
    await asyncio.sleep(0.3)
    assert await inbox_count(hub) == 0
    assert qq.sent == [] and qq.api.requests == []


HOSTILE: list[bytes] = [
    b"",
    b"\xff\xfe not utf-8",
    b"[" * 50_000 + b"]" * 50_000,
    b'{"op": 0, "id": "e", "t": "C2C_MESSAGE_CREATE", "d": ' + b'{"a":' * 20_000 + b"1" + b"}" * 20_000 + b"}",
    b'{"op": "0"}',
    b'{"op": 13, "d": []}',
    b'{"op": 13, "d": {"plain_token": {"x": 1}, "event_ts": 5}}',
    b'{"op": 0, "id": ["e"], "t": "C2C_MESSAGE_CREATE", "d": {}}',
    b'{"op": 0, "id": "e", "t": "C2C_MESSAGE_CREATE", "d": []}',
    b'{"op": 0, "id": "e", "t": "C2C_MESSAGE_CREATE", "d": {"author": [], "id": "m"}}',
    b'{"op": 0, "id": "e", "t": "GROUP_AT_MESSAGE_CREATE", "d": {"author": {"member_openid": "m"}, "id": "m"}}',
    b'{"op": 0, "t": "C2C_MESSAGE_CREATE", "d": {"author": {"user_openid": "u"}, "id": "m", "content": "x"}}',
    json.dumps(
        {
            "op": 0,
            "id": "e",
            "t": "C2C_MESSAGE_CREATE",
            "d": {"author": {"user_openid": "u"}, "id": "m", "content": "x" * 900_000},
        }
    ).encode(),
    json.dumps({"op": 0, "id": "e" * 5000, "t": "C2C_MESSAGE_CREATE", "d": {}}).encode(),
    b"{" + b'"k": 1,' * 200_000 + b'"op": 0}',  # over the 1 MiB limit
]


async def test_hostile_bodies_get_4xx_never_500(hub: RunningHub, qq: FakeQQ) -> None:
    for body in HOSTILE:
        for headers in (signed_headers(body), {"Content-Type": "application/json"}):
            status, answer = await post(hub.url, body, sign=False, headers=headers)
            assert 400 <= status < 500, (status, body[:80], answer)
    # Headers of the wrong shape: refused as unsigned or forged.
    body = json.dumps(qq.c2c("hi")).encode()
    for bad in ({"X-Signature-Timestamp": "x" * 5000}, {"X-Signature-Ed25519": "é" * 64}, {"X-Bot-Appid": "other"}):
        status, _ = await post(hub.url, body, sign=False, headers={**signed_headers(body), **bad})
        assert status in (401, 403)
    await asyncio.sleep(0.2)
    assert await inbox_count(hub) == 0
    # A well-formed message whose attachments are junk: the message gets in, the junk does not.
    junk = (
        b'{"op": 0, "id": "e", "t": "C2C_MESSAGE_CREATE", "d": {"author": {"user_openid": "u"}, "id": "m", '
        b'"content": "x", "attachments": [' + b'{"url": 5},' * 1000 + b'{"url": "https://x/y", "size": "big"}]}}'
    )
    status, _ = await post(hub.url, junk)
    assert status == 200
    async with hub.hub.db.engine.connect() as conn:
        stored = (await conn.execute(select(inbox.c.payload))).scalar_one()
    assert stored["message"] == [{"type": "text", "text": "x"}]
    status, _ = await post(hub.url, qq.c2c("still here"))
    assert status == 200


async def test_attachments_are_stored_as_media(hub: RunningHub, qq: FakeQQ) -> None:
    attachment = {
        "content_type": "image/png",
        "filename": "cat.png",
        "size": 68,
        "url": "https://multimedia.example/cat.png",
    }
    await post(hub.url, qq.c2c("", attachments=[attachment]))
    await eventually(lambda: inbox_count(hub), timeout=5)
    async with hub.hub.db.engine.connect() as conn:
        row = (await conn.execute(select(inbox.c.payload))).scalar_one()
    assert row["message"] == [
        {
            "type": "image",
            "url": "https://multimedia.example/cat.png",
            "name": "cat.png",
            "mime": "image/png",
            "size": 68,
        }
    ]


async def answered_message(hub: RunningHub, qq: FakeQQ) -> dict[str, object]:
    """A message the user sent (and the hub answered): its reply context, for queued sends."""
    payload = qq.c2c("hi")
    await post(hub.url, payload)
    await qq.api.wait_for(lambda: any(s.body["msg_id"] == payload["d"]["id"] for s in qq.sent))
    return {"msg_id": payload["d"]["id"]}


async def test_media_is_uploaded_by_its_public_url_then_sent_as_msg_type_7(tmp_path: Path, qq: FakeQQ) -> None:
    public = f'[http]\npublic_url = "{PUBLIC}"\n[web]\ntoken = "web-secret-1"\n'
    async with running_hub(qq_settings(tmp_path, qq, public)) as running:
        qq.resolve[PUBLIC] = running.url
        context = await answered_message(running, qq)
        stored = await running.hub.media.save_bytes(PNG_1X1, name="cat.png", mime="image/png")
        msg = Message((Image(path=str(stored.path), caption="a cat"),))
        await running.hub.outbox.put(NewMessage(target=CHAT, message=msg, context=context))
        await qq.api.wait_for(lambda: len(qq.sent) >= 3)
        image, caption = qq.sent[1:3]
        assert image.body["msg_type"] == 7 and image.body["msg_seq"] == 2
        assert qq.files[image.body["media"]["file_info"]] == f"{PUBLIC}/media/{stored.id}"
        assert qq.api.calls(f"/v2/users/{USER}/files")[0].json["file_type"] == 1
        assert caption.content == "a cat" and caption.body["msg_seq"] == 3

        qq.fetch_fails = True  # QQ cannot fetch it (304082): the user gets the link instead
        await running.hub.outbox.put(
            NewMessage(target=CHAT, message=Message((Video(path=str(stored.path)),)), context=context)
        )
        await qq.api.wait_for(lambda: len(qq.sent) >= 4)
        assert qq.sent[3].body["msg_type"] == 0
        # In Chinese, the chat's language on QQ.
        assert qq.sent[3].content == f"这个视频无法在这里显示。\n在这里打开：\n{PUBLIC}/media/{stored.id}"


async def test_without_public_url_local_media_is_a_clear_text(hub: RunningHub, qq: FakeQQ) -> None:
    context = await answered_message(hub, qq)
    stored = await hub.hub.media.save_bytes(PNG_1X1, name="cat.png", mime="image/png")
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message((Image(path=str(stored.path)),)), context=context))
    await qq.api.wait_for(lambda: len(qq.sent) >= 2)
    assert qq.sent[1].body["msg_type"] == 0
    assert qq.sent[1].content == (
        "这张图片无法在这里发送。\n也无法提供链接：请让运行本机器人的人设置 [http] public_url。"
    )
    assert qq.api.calls(f"/v2/users/{USER}/files") == []


async def test_a_refused_token_is_renewed_once(hub: RunningHub, qq: FakeQQ) -> None:
    await answered_message(hub, qq)
    qq.valid_tokens.clear()  # QQ forgot the token: 401, a new one, the call again
    await post(hub.url, qq.c2c("again"))
    await qq.api.wait_for(lambda: len(qq.sent) >= 2)
    assert qq.token_fetches() == 2
    assert [code for code, _ in qq.refused] == [11244]


def test_qq_can_be_enabled_and_needs_its_credentials(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, '[qq]\nenabled = true\napp_id = "1"\napp_secret = "s"\n')
    assert settings.qq.enabled
    with pytest.raises(ConfigError) as err:
        make_settings(tmp_path, '[qq]\nenabled = true\napp_id = "1"\n')
    assert [key for key, _ in err.value.problems] == ["qq.app_secret"]


async def test_the_webhook_is_404_while_qq_is_disabled(tmp_path: Path, qq: FakeQQ) -> None:
    async with running_hub(make_settings(tmp_path)) as running:
        status, _ = await post(running.url, qq.c2c("hello"))
        assert status == 404
    assert qq.api.requests == [] and qq.tokens.requests == []
