"""OneBot v11 at the edges: hostile input on both inbound paths, and media both ways."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_onebot import FakeOneBot, group_message, plain_text, private_message, text
from fake_openai import FakeOpenAI
from harness import make_settings, running_hub
from sqlalchemy import select
from test_config import check_config
from test_onebot import BOT, SECRET, TOKEN, USER, inbox_rows, settings_for

from hub.events import Audio, ChatRef, File, Image, Message, Video, event_from_dict
from hub.storage.models import inbox
from hub.storage.outbox import NewMessage


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


HOSTILE: list[Any] = [
    b"[" * 200000 + b"]" * 200000,
    b'{"a":' * 50000 + b"1" + b"}" * 50000,
    b"\xff\xfe garbage",
    b"[]",
    b"null",
    b'"just a string"',
    b"{}",
    {"post_type": "message", "self_id": BOT},
    {"post_type": ["message"], "self_id": BOT},
    {**private_message(BOT, USER, "x", 1), "self_id": {"$gt": 1}},
    {**private_message(BOT, USER, "x", 1), "message_type": {"a": 1}},
    {**private_message(BOT, USER, "x", 1), "user_id": 1e308},
    {**private_message(BOT, USER, "x", 1), "message_id": None},
    {**private_message(BOT, USER, "x", 1), "message_id": "x" * 10000},
    {**private_message(BOT, USER, "x", 1), "sender": "not a dict"},
    {**group_message(BOT, 5, USER, "x", 1), "group_id": "-1"},
    private_message(BOT, USER, [{"type": "text", "data": {"text": ["nested", {"deep": [1]}]}}], 2),
    private_message(BOT, USER, [{"type": "at", "data": {"qq": {"x": 1}}}, {"type": "image", "data": {"url": 5}}], 3),
    private_message(BOT, USER, [[[[[]]]]] * 1000, 4),
    private_message(BOT, USER, "[CQ:at,qq=[CQ:image,file=]]][CQ:,][CQ:reply,id=" + "&#" * 1000, 5),
    private_message(BOT, USER, [{"type": "x" * 1000, "data": {}}] * 500 + [{"type": "face", "data": {}}] * 5000, 6),
    private_message(BOT, USER, {"type": "reply", "data": {"id": {"a": 1}}}, 7),
    private_message(BOT, USER, 12345, 8),
]


async def test_hostile_http_posts_get_4xx_or_are_ignored_never_500(
    tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI
) -> None:
    async with running_hub(settings_for(tmp_path, fake, model)) as h:
        for body in HOSTILE:
            answer = await fake.post(h.url, body if isinstance(body, bytes) else json.dumps(body).encode())
            assert answer.status in (204, 400), (answer.status, answer.text, str(body)[:100])
        huge = json.dumps(private_message(BOT, USER, "y" * (2 * 1024 * 1024), 9)).encode()
        assert (await fake.post(h.url, huge)).status == 413
        mismatch = private_message(BOT, USER, "x", 10)
        answer = await fake.post(h.url, json.dumps({**mismatch, "self_id": 1}).encode(), secret=SECRET)
        assert answer.status in (204, 400)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{h.url}/healthz") as resp:
                assert resp.status == 200
        # Whatever was stored parses back as an Event (the inbox worker never chokes on it).
        async with h.hub.db.engine.connect() as conn:
            payloads = [r.payload for r in (await conn.execute(select(inbox))).all()]
        for p in payloads:
            event_from_dict(p)
        # And the path still works.
        assert (await fake.post(h.url, private_message(BOT, USER, "still here", 99))).status == 204
        await fake.wait_for(lambda: any(plain_text(a) == "re: still here" for a in fake.sends()))


async def test_hostile_frames_on_the_socket_are_dropped_and_the_socket_stays(
    tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI
) -> None:
    async with running_hub(settings_for(tmp_path, fake, model, api=False)) as h:
        await fake.connect(h.url, BOT)
        for body in HOSTILE:
            await fake.push_raw(BOT, body.decode("utf-8", "replace") if isinstance(body, bytes) else json.dumps(body))
        await fake.push_raw(BOT, json.dumps({"echo": "nobody:1", "status": "ok", "retcode": 0}))
        await fake.push_raw(BOT, json.dumps({"echo": {"a": []}}))
        await fake.push(BOT, private_message(BOT, USER, "still here", 99))
        await fake.wait_for(lambda: any(plain_text(a) == "re: still here" for a in fake.sends()))
        assert fake.connected(BOT)
        # A frame over the size limit closes that socket (aiohttp's limit), and it may reconnect.
        await fake.push_raw(BOT, json.dumps(private_message(BOT, USER, "z" * (2 * 1024 * 1024), 100)))
        await fake.wait_for(lambda: not fake.connected(BOT))
        await fake.connect(h.url, BOT)
        await fake.push(BOT, private_message(BOT, USER, "back", 101))
        await fake.wait_for(lambda: any(plain_text(a) == "re: back" for a in fake.sends()))


async def test_a_handshake_without_a_self_id_is_refused(tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, fake, model, api=False)) as h:
        async with aiohttp.ClientSession() as http:
            for self_id in (None, "abc", "1" * 30):
                headers = {"Authorization": f"Bearer {TOKEN}"}
                if self_id is not None:
                    headers["X-Self-ID"] = self_id
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await http.ws_connect(h.url.replace("http", "ws") + "/onebot/v11/ws", headers=headers)
                assert err.value.status == 400


async def test_inbound_media_become_segments_with_their_urls(
    tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI
) -> None:
    async with running_hub(settings_for(tmp_path, fake, model)) as h:
        message = [
            text("see"),
            {"type": "image", "data": {"file": "a.image", "url": "https://multimedia.nt.qq.com.cn/a"}},
            {"type": "record", "data": {"file": "b.amr", "url": "https://example.com/b.silk"}},
            {"type": "video", "data": {"file": "c.mp4", "url": "https://example.com/c.mp4"}},
        ]
        assert (await fake.post(h.url, private_message(BOT, USER, message, 5))).status == 204
        (row,) = await inbox_rows(h)
        event = event_from_dict(row.payload)
        image, voice, video = event.message.media
        assert isinstance(image, Image) and image.url == "https://multimedia.nt.qq.com.cn/a"
        assert isinstance(voice, Audio) and voice.voice and voice.url == "https://example.com/b.silk"
        assert isinstance(video, Video) and video.url == "https://example.com/c.mp4"


@pytest.mark.parametrize("public", [True, False])
async def test_outbound_media_go_as_segments_with_a_link_or_base64(
    tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI, public: bool
) -> None:
    settings = settings_for(tmp_path, fake, model)
    if public:
        settings = make_settings(tmp_path, _PUBLIC + _toml_of(fake, model))
    async with running_hub(settings) as h:
        stored = await h.hub.media.save_bytes(b"\x89PNG fake", name="cat.png", mime="image/png")
        target = ChatRef("onebot", "group", f"{BOT}/777")
        message = Message.of(
            "here you are",
            Image(path=str(stored.path), caption="a cat"),
            Audio(data=b"ID3 fake mp3", name="song.mp3"),
            Video(url="https://cdn.example.com/v.mp4", caption="the video"),
            File(data=b"%PDF", name="doc.pdf"),
        )
        await h.hub.outbox.put(NewMessage(target=target, message=message))
        sends = await fake.wait_sends(5)
        assert all(a.action == "send_group_msg" and a.params["group_id"] == 777 for a in sends)
        first, voice, video, caption, doc = (a.params["message"] for a in sends)
        image_file = f"https://hub.example.com/media/{stored.id}" if public else _b64(b"\x89PNG fake")
        assert first == [
            {"type": "text", "data": {"text": "here you are"}},
            {"type": "image", "data": {"file": image_file}},
            {"type": "text", "data": {"text": "a cat"}},
        ]
        # Bytes are stored by the outbox first: with a public address they go as links too.
        voice_file, doc_file = voice[0]["data"]["file"], doc[0]["data"]["file"]
        if public:
            assert voice_file.startswith("https://hub.example.com/media/")
            assert doc_file.startswith("https://hub.example.com/media/")
        else:
            assert (voice_file, doc_file) == (_b64(b"ID3 fake mp3"), _b64(b"%PDF"))
        assert voice == [{"type": "record", "data": {"file": voice_file}}]
        assert video == [{"type": "video", "data": {"file": "https://cdn.example.com/v.mp4"}}]
        assert caption == [{"type": "text", "data": {"text": "the video"}}]
        assert doc == [{"type": "file", "data": {"file": doc_file, "name": "doc.pdf"}}]


def _b64(data: bytes) -> str:
    return "base64://" + base64.b64encode(data).decode()


def _toml_of(fake: FakeOneBot, model: FakeOpenAI, *, api: bool = True) -> str:
    return f"""
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


def test_onebot_can_be_enabled(tmp_path: Path) -> None:
    toml = '[onebot]\nenabled = true\naccess_token = "t"\nsecret = "s"\napi_base = "http://127.0.0.1:3000"\n'
    done = check_config(tmp_path, toml)
    assert done.returncode == 0, done.stderr
    assert "channel: onebot" in done.stdout
    assert '"t"' not in done.stdout and "secret" not in done.stdout
    bad = check_config(tmp_path, '[onebot]\nenabled = true\napi_base = "http://127.0.0.1:3000/path"\n')
    assert bad.returncode == 2 and "onebot.api_base" in bad.stderr


# A public address needs the web token (check-config), though these tests never use the page.
_PUBLIC = '[http]\npublic_url = "https://hub.example.com"\n\n[web]\ntoken = "web-token-for-public-url"\n'


async def test_the_delivery_api_reaches_a_onebot_chat_through_its_account(
    tmp_path: Path, fake: FakeOneBot, model: FakeOpenAI
) -> None:
    settings = make_settings(tmp_path, '[api]\ntoken = "api-token"\n' + _toml_of(fake, model, api=False))
    async with running_hub(settings) as h:
        await fake.connect(h.url, BOT)
        body = {"to": f"onebot:group:{BOT}/30009", "text": "scheduled notice"}
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Bearer api-token"}
            async with http.post(f"{h.url}/api/v1/messages", json=body, headers=headers) as resp:
                assert resp.status == 202
        (sent,) = await fake.wait_sends(1)
        assert (sent.self_id, sent.action, sent.params["group_id"], plain_text(sent)) == (
            BOT,
            "send_group_msg",
            30009,
            "scheduled notice",
        )
