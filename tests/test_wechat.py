"""The Official Account channel end to end, push mode: signed callbacks in over real HTTP, the
customer-service API of a fake WeChat out, the rows in the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_openai import FakeOpenAI
from fake_wechat import (
    ACCOUNT,
    APP_ID,
    APP_SECRET,
    OPENID,
    FakeWeChatApi,
    WeChatServer,
    event_xml,
    sign,
    text_xml,
)
from harness import RunningHub, eventually, make_settings, running_hub
from sqlalchemy import select

from hub.events import Audio, ChatRef, File, Image, Message, Video
from hub.settings import Settings
from hub.storage.models import inbox
from hub.storage.outbox import NewMessage

TOKEN = "spamtest"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CHAT = ChatRef("wechat", "private", OPENID)
PUBLIC = "https://hub.example.com"


def settings_for(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI | None, *, aes: bool = True, extra: str = ""
) -> Settings:
    toml = f"""
[http]
public_url = "{PUBLIC}"

[web]
token = "test-web-token"

[wechat]
enabled = true
app_id = "{APP_ID}"
app_secret = "{APP_SECRET}"
token = "{TOKEN}"
api_base = "{api.url}"
{f'encoding_aes_key = "{AES_KEY}"' if aes else ""}
{extra}
"""
    if model is not None:
        toml += f"""
[[models]]
name = "fake"
base_url = "{model.base_url}"
api_key = "sk-test"
model = "fake-1"
"""
    return make_settings(tmp_path, toml)


@pytest.fixture
async def api() -> AsyncIterator[FakeWeChatApi]:
    fake = FakeWeChatApi()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI) -> AsyncIterator[RunningHub]:
    async with running_hub(settings_for(tmp_path, api, model)) as h:
        yield h


wechat = WeChatServer(TOKEN, AES_KEY)


async def inbox_rows(h: RunningHub) -> list[Any]:
    async with h.hub.db.engine.connect() as conn:
        return list((await conn.execute(select(inbox))).all())


async def test_url_verification_echoes_echostr_only_when_signed(hub: RunningHub) -> None:
    async with aiohttp.ClientSession() as http:
        good = {
            "signature": sign(TOKEN, "1410685589", "n1"),
            "timestamp": "1410685589",
            "nonce": "n1",
            "echostr": "e42",
        }
        async with http.get(f"{hub.url}/webhooks/wechat", params=good) as resp:
            assert (resp.status, await resp.text()) == (200, "e42")
        async with http.get(f"{hub.url}/webhooks/wechat", params={**good, "nonce": "n2"}) as resp:
            assert resp.status == 403
            assert "e42" not in await resp.text()


async def test_safe_mode_text_is_answered_at_once_and_replied_through_customer_service(
    hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    answer = await wechat.post(hub.url, text_xml("你好", "6054768590064713728"))
    assert (answer.status, answer.text) == (200, "success")
    await api.wait_sent(1)
    (sent,) = api.sent()
    assert sent == {"touser": OPENID, "msgtype": "text", "text": {"content": "re: 你好"}}
    # The model was asked with the user's words, decrypted.
    assert model.messages()[-1] == {"role": "user", "content": "你好"}
    (row,) = await inbox_rows(hub)
    assert (row.channel, row.event_id, row.chat, row.sender) == (
        "wechat",
        "6054768590064713728",
        f"wechat:private:{OPENID}",
        f"wechat:{OPENID}",
    )
    assert len(api.token_calls()) == 1
    # The token query carried the account's credentials.
    assert api.token_calls()[0].query == {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}


async def test_the_answer_comes_within_one_second_while_the_model_takes_ten(
    hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    model.first_token_delay_s = 10.0
    answer = await wechat.post(hub.url, text_xml("慢慢想", "7001"))
    assert (answer.status, answer.text) == (200, "success")
    assert answer.seconds < 1.0
    await model.wait_requests(1)  # the skill is at work: the model has the question
    assert len(await inbox_rows(hub)) == 1
    assert api.sent() == []
    await hub.hub.dispatcher.stop(grace_s=0.1)  # the model is still thinking: do not wait for it


async def test_three_deliveries_of_one_message_give_one_reply(
    hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    xml = text_xml("retry me", "7002")
    answers = await asyncio.gather(*(wechat.post(hub.url, xml) for _ in range(3)))
    assert [a.text for a in answers] == ["success"] * 3
    await api.wait_sent(1)
    late = await wechat.post(hub.url, xml)  # WeChat's last retry, after the reply went out
    assert late.text == "success"
    await asyncio.sleep(0.5)
    assert len(api.sent()) == 1 and len(model.requests) == 1
    assert len(await inbox_rows(hub)) == 1


async def test_forged_signature_is_refused_and_never_stored(hub: RunningHub, api: FakeWeChatApi) -> None:
    params, body = wechat.request(text_xml("forged", "7003"))
    forged = await wechat.post_raw(hub.url, {**params, "msg_signature": "0" * 40}, body)
    assert forged.status == 403
    other_token = WeChatServer("not-the-token", AES_KEY)
    assert (await other_token.post(hub.url, text_xml("forged", "7004"))).status == 403
    other_app = WeChatServer(TOKEN, AES_KEY, "wx0000000000000000")
    assert (await other_app.post(hub.url, text_xml("forged", "7005"))).status == 403
    plain = WeChatServer(TOKEN)  # a plain-mode request to an account in safe mode
    assert (await plain.post(hub.url, text_xml("plain", "7006"))).status in (401, 403)
    no_sig = await wechat.post_raw(hub.url, {"timestamp": "1", "nonce": "2"}, body)
    assert no_sig.status == 401
    assert await inbox_rows(hub) == []
    await asyncio.sleep(0.3)
    assert api.sent() == []


async def test_malformed_body_is_400(hub: RunningHub) -> None:
    params, _ = wechat.request(text_xml("x", "1"))
    bad = await wechat.post_raw(hub.url, params, "<xml><Encrypt>")
    assert bad.status == 400
    assert await inbox_rows(hub) == []


async def test_plain_mode_account(tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, api, model, aes=False)) as h:
        plain = WeChatServer(TOKEN)
        assert (await plain.post(h.url, text_xml("hello", "8001"))).text == "success"
        await api.wait_sent(1)
        assert api.sent()[0]["text"] == {"content": "re: hello"}
        params, body = plain.request(text_xml("forged", "8002"))
        assert (await plain.post_raw(h.url, {**params, "signature": "f" * 40}, body)).status == 403


async def test_a_stranger_on_wechat_gets_the_pairing_code_in_chinese(tmp_path: Path, api: FakeWeChatApi) -> None:
    extra = '[access]\nprivate = "pairing"\n'
    async with running_hub(settings_for(tmp_path, api, None, extra=extra)) as h:
        assert (await wechat.post(h.url, text_xml("你好", "9001"))).status == 200
        await api.wait_sent(1)
        text = api.sent()[0]["text"]["content"]
        code = text.split("你的配对码是 ", 1)[1][:6]
        assert (await h.hub.pairing.get(code)) is not None
        assert text.startswith("你好！本机器人只和经管理员批准的人聊天。\n")
        assert f"（1 小时内有效）。请把它发给本机器人的管理员，由管理员发送 /admin approve {code} 批准。" in text
        assert text.endswith(f"你的 ID：wechat:{OPENID}")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "你好！给我发消息就能聊天，发送 /help 查看我能做什么。"),
        ('[bot]\nlanguage = "en"\n', "Hello! Send me a message to chat, or /help to see what I can do."),
    ],
)
async def test_subscribe_without_a_persona_greeting_gets_the_welcome_in_the_chats_language(
    tmp_path: Path, api: FakeWeChatApi, extra: str, expected: str
) -> None:
    async with running_hub(settings_for(tmp_path, api, None, extra=extra)) as h:
        answer = await wechat.post(h.url, event_xml("subscribe", create_time=1700000000))
        assert wechat.open_reply(answer.text)["Content"] == expected


async def test_subscribe_gets_the_persona_greeting_in_the_answer(tmp_path: Path, api: FakeWeChatApi) -> None:
    persona = '[[personas]]\nname = "Lin"\ngreeting = "你好呀，欢迎来到我的书店！"\ndefault = true\n'
    async with running_hub(settings_for(tmp_path, api, None, extra=persona)) as h:
        answer = await wechat.post(h.url, event_xml("subscribe", create_time=1700000000))
        assert answer.status == 200
        reply = wechat.open_reply(answer.text)
        assert reply["MsgType"] == "text"
        assert reply["Content"] == "你好呀，欢迎来到我的书店！"
        assert (reply["ToUserName"], reply["FromUserName"]) == (OPENID, ACCOUNT)
        # Stored once, deduplicated on FromUserName + CreateTime.
        again = await wechat.post(h.url, event_xml("subscribe", create_time=1700000000))
        assert wechat.open_reply(again.text)["Content"] == "你好呀，欢迎来到我的书店！"
        (row,) = await inbox_rows(h)
        assert row.event_id == f"{OPENID}:1700000000"
        # Other events are acknowledged and not stored.
        click = await wechat.post(h.url, event_xml("CLICK", create_time=1700000001, key="MENU_1"))
        assert (click.status, click.text) == (200, "success")
        assert len(await inbox_rows(h)) == 1


async def test_voice_with_recognition_is_answered_as_its_text(
    hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    xml = (
        f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{OPENID}</FromUserName><CreateTime>1</CreateTime>"
        "<MsgType>voice</MsgType><MediaId>V1</MediaId><Format>amr</Format><Recognition>明天天气怎么样</Recognition>"
        "<MsgId>9001</MsgId></xml>"
    )
    assert (await wechat.post(hub.url, xml)).text == "success"
    await api.wait_sent(1)
    assert api.sent()[0]["text"]["content"] == "re: 明天天气怎么样"


async def test_location_and_link_are_stored_and_get_no_reply(hub: RunningHub, api: FakeWeChatApi) -> None:
    head = f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{OPENID}</FromUserName><CreateTime>1</CreateTime>"
    loc = head + "<MsgType>location</MsgType><Location_X>23.1</Location_X><Location_Y>113.2</Location_Y>"
    loc += "<Scale>20</Scale><Label>Canton</Label><MsgId>9101</MsgId></xml>"
    link = head + "<MsgType>link</MsgType><Title>T</Title><Description>D</Description><Url>http://x</Url>"
    link += "<MsgId>9102</MsgId></xml>"
    for xml in (loc, link):
        assert (await wechat.post(hub.url, xml)).text == "success"

    async def handled() -> bool:
        return [r.status for r in await inbox_rows(hub)] == ["done", "done"]

    await eventually(handled)
    await asyncio.sleep(0.3)
    assert api.sent() == []


async def test_long_text_goes_in_parts_of_at_most_2048_bytes(hub: RunningHub, api: FakeWeChatApi) -> None:
    text = "这是一个很长的回答。" * 250  # 7,500 bytes
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message.of(text)))
    await api.wait_sent(4)
    await asyncio.sleep(0.2)
    parts = [s["text"]["content"] for s in api.sent()]
    assert len(parts) == 4
    assert all(len(p.encode()) <= 2048 for p in parts)
    assert "".join(parts) == text


async def test_a_finished_video_is_uploaded_and_sent_as_a_video(
    hub: RunningHub, api: FakeWeChatApi, tmp_path: Path
) -> None:
    video = tmp_path / "video-7f3a.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"v" * 50_000)
    segment = Video(
        path=str(video), name=video.name, mime="video/mp4", size=video.stat().st_size, caption="一只小猪在唱歌"
    )
    # What the jobs poller does with a finished job.
    await hub.hub.outbox.put(
        NewMessage(target=CHAT, message=Message((segment,)), origin="job", idempotency_key="job:7f3a")
    )
    await api.wait_sent(1)
    (upload,) = api.uploads()
    assert (upload.type, upload.data, upload.content_type) == ("video", video.read_bytes(), "video/mp4")
    assert upload.filename.endswith(".mp4")
    (sent,) = api.sent()
    assert sent["msgtype"] == "video"
    assert sent["video"]["media_id"] == "MEDIA-1"
    assert sent["video"]["title"] == "一只小猪在唱歌"


async def test_image_and_voice_are_uploaded_first(hub: RunningHub, api: FakeWeChatApi) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"p" * 1000
    message = Message.of(
        Image(data=png, name="cat.png", caption="a cat"), Audio(data=b"ID3" + b"a" * 500, name="hi.mp3")
    )
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=message))
    await api.wait_sent(3)
    assert [(u.type, u.data) for u in api.uploads()] == [("image", png), ("voice", b"ID3" + b"a" * 500)]
    assert [s["msgtype"] for s in api.sent()] == ["image", "text", "voice"]
    assert api.sent()[0]["image"] == {"media_id": "MEDIA-1"}
    assert api.sent()[1]["text"] == {"content": "a cat"}


async def test_media_too_large_goes_as_a_link(hub: RunningHub, api: FakeWeChatApi, tmp_path: Path) -> None:
    big = tmp_path / "huge.mp4"
    with big.open("wb") as fh:
        fh.truncate(11 * 1024 * 1024)  # over the 10 MB of a video
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message((Video(path=str(big), caption="a long film"),))))
    await api.wait_sent(1)
    assert api.uploads() == []
    text = api.sent()[0]["text"]["content"]
    # A WeChat chat reads it in Chinese, after the video's own words.
    caption, why, where, link = text.split("\n")
    assert (caption, why, where) == ("a long film", "这个视频（11 MB）太大，无法在这里发送。", "在这里打开：")
    assert link.startswith(f"{PUBLIC}/media/")
    # The link serves the file.
    async with aiohttp.ClientSession() as http:
        async with http.get(hub.url + link.removeprefix(PUBLIC)) as resp:
            assert resp.status == 200
            assert resp.content_length == 11 * 1024 * 1024
    # A file has no message type on an Official Account: always a link.
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message((File(data=b"%PDF-1.4", name="a.pdf"),))))
    await api.wait_sent(2)
    assert api.sent()[1]["text"]["content"].startswith(f"这个文件无法在这里发送。\n在这里打开：\n{PUBLIC}/media/")
    # A chat that chose English with /lang reads it in English.
    await hub.hub.chats.update(str(CHAT), language="en")
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message((File(data=b"%PDF-1.4", name="a.pdf"),))))
    await api.wait_sent(3)
    english = api.sent()[2]["text"]["content"]
    assert english.startswith(f"This file cannot be sent here.\nOpen it here:\n{PUBLIC}/media/")


async def test_an_expired_token_is_refreshed_once_and_the_message_still_goes(
    hub: RunningHub, api: FakeWeChatApi
) -> None:
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("first")))
    await api.wait_sent(1)
    api.expire_tokens(40001)
    # Five chats, so five sends meet the refused token at once.
    chats = [ChatRef("wechat", "private", f"{OPENID}{i}") for i in range(5)]
    await asyncio.gather(*(hub.hub.outbox.put(NewMessage(target=c, message=Message.of("again"))) for c in chats))
    await api.wait_sent(6)
    assert len(api.token_calls()) == 2
    refused = [r for r in api.server.calls("/cgi-bin/message/custom/send") if not getattr(r, "accepted", False)]
    assert 1 <= len(refused) <= 5
    assert {s["touser"] for s in api.sent()[1:]} == {c.chat_id for c in chats}

    async def all_sent() -> bool:
        return [r["status"] for r in await hub.hub.outbox_repo.all_rows()] == ["sent"] * 6

    await eventually(all_sent)
    # Refreshed and resent within the first attempt: no retry was needed.
    assert all(r["attempts"] == 0 and r["last_error"] is None for r in await hub.hub.outbox_repo.all_rows())


async def test_rate_limit_backs_off_then_sends(hub: RunningHub, api: FakeWeChatApi) -> None:
    api.fail_next("/cgi-bin/message/custom/send", 45009, "reach max api daily quota limit")
    started = time.monotonic()
    item = await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("later")))

    async def retried() -> bool:
        rows = await hub.hub.outbox_repo.all_rows()
        return rows[0]["attempts"] == 1 and "45009" in (rows[0]["last_error"] or "")

    await eventually(retried)
    (row,) = await hub.hub.outbox_repo.all_rows()
    assert row["id"] == item and row["status"] == "pending"
    assert (row["next_attempt_at"].timestamp() - time.time()) > 30  # told to wait, not hammering
    assert api.sent() == [] and time.monotonic() - started < 5


async def test_outside_48_hours_is_final_for_the_message(hub: RunningHub, api: FakeWeChatApi) -> None:
    api.fail_next("/cgi-bin/message/custom/send", 45015, "response out of time limit or subscription is canceled")

    async def failed() -> bool:
        rows = await hub.hub.outbox_repo.all_rows()
        return bool(rows) and rows[0]["status"] == "failed"

    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("too late")))
    await eventually(failed)
    assert len(api.server.calls("/cgi-bin/message/custom/send")) == 1


async def test_wrong_secret_keeps_messages_waiting(tmp_path: Path, api: FakeWeChatApi) -> None:
    settings = settings_for(tmp_path, api, None, extra="")
    settings = settings.model_copy(update={"wechat": settings.wechat.model_copy(update={"app_id": "wx-wrong"})})
    async with running_hub(settings) as h:
        await h.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("hi")))

        async def retrying() -> bool:
            rows = await h.hub.outbox_repo.all_rows()
            return bool(rows) and rows[0]["attempts"] >= 1

        await eventually(retrying)
        (row,) = await h.hub.outbox_repo.all_rows()
        assert row["status"] == "pending" and "40125" in row["last_error"]
        assert "oa-secret" not in row["last_error"]
        assert h.hub.channels["wechat"].status() == "failing"
        async with aiohttp.ClientSession() as http, http.get(f"{h.url}/healthz") as resp:
            assert (await resp.json())["channels"]["wechat"] == "failing"


async def test_wechat_routes_are_absent_when_disabled(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        async with aiohttp.ClientSession() as http, http.post(f"{h.url}/webhooks/wechat", data=b"<xml/>") as resp:
            assert resp.status == 404
        assert "wechat" not in h.hub.channels
