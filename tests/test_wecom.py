"""The WeCom app channel end to end: WeCom's official callback samples in over real HTTP, the app
message API of a fake WeCom out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_openai import FakeOpenAI
from fake_wechat import AGENT_ID, CORP_ID, CORP_SECRET, FakeWeChatApi, WeChatServer, event_xml, text_xml
from harness import RunningHub, make_settings, running_hub
from sqlalchemy import select
from test_wechat_units import WECOM_AES, WECOM_ECHO, WECOM_ENCRYPT, WECOM_TOKEN
from yarl import URL

from hub.events import Audio, ChatRef, Message, Video
from hub.settings import Settings
from hub.storage.models import inbox
from hub.storage.outbox import NewMessage

SEND = "/cgi-bin/message/send"
USER = "ChenJiaShun"
CHAT = ChatRef("wecom", "private", USER)
SAMPLE_QUERY = {
    "msg_signature": "0c3914025cb4b4d68103f6bfc8db550f79dcf48e",
    "timestamp": "1476422779",
    "nonce": "1597212914",
}
SAMPLE_BODY = f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{WECOM_ENCRYPT}]]></Encrypt></xml>"

wecom = WeChatServer(WECOM_TOKEN, WECOM_AES, CORP_ID, enterprise=True, path="/webhooks/wecom")


def settings_for(tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI | None, extra: str = "") -> Settings:
    toml = f"""
[http]
public_url = "https://hub.example.com"

[web]
token = "test-web-token"

[wecom]
enabled = true
corp_id = "{CORP_ID}"
agent_id = "{AGENT_ID}"
secret = "{CORP_SECRET}"
token = "{WECOM_TOKEN}"
encoding_aes_key = "{WECOM_AES}"
api_base = "{api.url}"
{extra}
"""
    if model is not None:
        toml += f'\n[[models]]\nname = "fake"\nbase_url = "{model.base_url}"\napi_key = "k"\nmodel = "m"\n'
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


async def inbox_rows(h: RunningHub) -> list[Any]:
    async with h.hub.db.engine.connect() as conn:
        return list((await conn.execute(select(inbox))).all())


async def test_url_verification_with_the_official_sample(hub: RunningHub) -> None:
    query = {
        "msg_signature": "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb",
        "timestamp": "1476416373",
        "nonce": "47744683",
        "echostr": WECOM_ECHO,
    }
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hub.url}/webhooks/wecom", params=query) as resp:
            assert (resp.status, await resp.text()) == (200, "1288432023552776189")
        async with http.get(f"{hub.url}/webhooks/wecom", params={**query, "nonce": "47744684"}) as resp:
            assert resp.status == 403
            assert "1288432023552776189" not in await resp.text()
        # Some senders leave the base64 `+` unescaped in the query string.
        raw = "&".join(f"{k}={v}" for k, v in query.items())
        async with http.get(URL(f"{hub.url}/webhooks/wecom?{raw}", encoded=True)) as resp:
            assert (resp.status, await resp.text()) == (200, "1288432023552776189")


async def test_the_official_sample_message_is_answered_through_the_app(
    hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    answer = await wecom.post_raw(hub.url, SAMPLE_QUERY, SAMPLE_BODY)
    assert (answer.status, answer.text) == (200, "")
    assert answer.seconds < 1.0
    await api.wait_sent(1, SEND)
    (sent,) = api.sent(SEND)
    assert sent == {"touser": USER, "msgtype": "text", "agentid": 1000002, "text": {"content": "re: 你好"}}
    (row,) = await inbox_rows(hub)
    assert (row.channel, row.event_id, row.chat, row.sender) == ("wecom", "1456453720", str(CHAT), "wecom:ChenJiaShun")
    (token_call,) = api.token_calls()
    assert (token_call.path, token_call.query) == ("/cgi-bin/gettoken", {"corpid": CORP_ID, "corpsecret": CORP_SECRET})


async def test_three_deliveries_give_one_reply(hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI) -> None:
    answers = await asyncio.gather(*(wecom.post_raw(hub.url, SAMPLE_QUERY, SAMPLE_BODY) for _ in range(3)))
    assert [a.status for a in answers] == [200, 200, 200]
    await api.wait_sent(1, SEND)
    await asyncio.sleep(0.5)
    assert len(api.sent(SEND)) == 1 and len(model.requests) == 1


async def test_forged_callbacks_are_refused_and_never_stored(hub: RunningHub, api: FakeWeChatApi) -> None:
    forged = await wecom.post_raw(hub.url, {**SAMPLE_QUERY, "msg_signature": "1" * 40}, SAMPLE_BODY)
    assert forged.status == 403
    other_corp = WeChatServer(WECOM_TOKEN, WECOM_AES, "ww0000000000000000", enterprise=True, path="/webhooks/wecom")
    assert (await other_corp.post(hub.url, text_xml("hi", "1", sender=USER, to=CORP_ID, agent=AGENT_ID))).status == 403
    no_sig = await wecom.post_raw(hub.url, {"timestamp": "1", "nonce": "2"}, SAMPLE_BODY)
    assert no_sig.status == 401
    assert await inbox_rows(hub) == []
    await asyncio.sleep(0.3)
    assert api.sent(SEND) == []


async def test_the_answer_comes_within_one_second_while_the_model_takes_ten(
    hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    model.first_token_delay_s = 10.0
    answer = await wecom.post(hub.url, text_xml("slow", "971", sender=USER, to=CORP_ID, agent=AGENT_ID))
    assert answer.status == 200 and answer.seconds < 1.0
    await model.wait_requests(1)
    assert api.sent(SEND) == []
    await hub.hub.dispatcher.stop(grace_s=0.1)  # the model is still thinking: do not wait for it


async def test_messages_for_another_app_are_ignored(hub: RunningHub) -> None:
    answer = await wecom.post(hub.url, text_xml("hi", "972", sender=USER, to=CORP_ID, agent="1000099"))
    assert answer.status == 200
    assert await inbox_rows(hub) == []


async def test_subscribe_gets_the_greeting_encrypted(tmp_path: Path, api: FakeWeChatApi) -> None:
    persona = '[[personas]]\nname = "Lin"\ngreeting = "欢迎！"\ndefault = true\n'
    async with running_hub(settings_for(tmp_path, api, None, extra=persona)) as h:
        xml = event_xml("subscribe", create_time=1476422800, sender=USER, to=CORP_ID).replace(
            "</xml>", f"<AgentID>{AGENT_ID}</AgentID></xml>"
        )
        answer = await wecom.post(h.url, xml)
        reply = wecom.open_reply(answer.text)
        assert (reply["MsgType"], reply["Content"], reply["ToUserName"], reply["AgentID"]) == (
            "text",
            "欢迎！",
            USER,
            AGENT_ID,
        )
        (row,) = await inbox_rows(h)
        assert row.event_id == f"{USER}:1476422800"


async def test_a_finished_video_is_uploaded_and_sent(hub: RunningHub, api: FakeWeChatApi, tmp_path: Path) -> None:
    video = tmp_path / "video-1.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"w" * 20_000)
    seg = Video(path=str(video), name=video.name, mime="video/mp4", caption="a piglet singing")
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message((seg,)), origin="job"))
    await api.wait_sent(1, SEND)
    (upload,) = api.uploads()
    assert (upload.type, upload.data) == ("video", video.read_bytes())
    (sent,) = api.sent(SEND)
    assert sent["msgtype"] == "video" and sent["agentid"] == 1000002
    assert sent["video"] == {"media_id": "MEDIA-1", "title": "a piglet singing", "description": "a piglet singing"}
    # Without a caption or a name it is titled in the chat's language.
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message((Video(path=str(video), mime="video/mp4"),))))
    await api.wait_sent(2, SEND)
    assert api.sent(SEND)[1]["video"]["title"] == "视频"


async def test_music_goes_as_a_file_and_large_files_as_links(
    hub: RunningHub, api: FakeWeChatApi, tmp_path: Path
) -> None:
    mp3 = b"ID3" + b"m" * 3 * 1024 * 1024  # 3 MB of music: too long for a voice message
    await hub.hub.outbox.put(
        NewMessage(target=CHAT, message=Message((Audio(data=mp3, name="song.mp3", duration=180),)))
    )
    await api.wait_sent(1, SEND)
    (upload,) = api.uploads()
    assert (upload.type, upload.filename, len(upload.data)) == ("file", "song.mp3", len(mp3))
    assert api.sent(SEND)[0]["msgtype"] == "file"
    huge = tmp_path / "huge.zip"
    with huge.open("wb") as fh:
        fh.truncate(21 * 1024 * 1024)
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message((Audio(path=str(huge), name="huge.wav"),))))
    await api.wait_sent(2, SEND)
    assert "https://hub.example.com/media/" in api.sent(SEND)[1]["text"]["content"]
    assert len(api.uploads()) == 1


@pytest.mark.parametrize("errcode", [42001, 40014])
async def test_a_refused_token_is_refreshed_once(hub: RunningHub, api: FakeWeChatApi, errcode: int) -> None:
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("one")))
    await api.wait_sent(1, SEND)
    api.expire_tokens(errcode)
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("two")))
    await api.wait_sent(2, SEND)
    assert len(api.token_calls()) == 2
    assert [s["text"]["content"] for s in api.sent(SEND)] == ["one", "two"]


async def test_rate_limit_backs_off(hub: RunningHub, api: FakeWeChatApi) -> None:
    api.fail_next(SEND, 45009, "api freq out of limit")
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("soon")))
    await api.server.wait_for(lambda: len(api.server.calls(SEND)) == 1)
    await asyncio.sleep(1.0)
    (row,) = await hub.hub.outbox_repo.all_rows()
    assert row["status"] == "pending" and row["attempts"] == 1 and "45009" in row["last_error"]
    assert len(api.server.calls(SEND)) == 1
