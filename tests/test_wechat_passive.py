"""WeChat `reply_mode = "passive"`: the reply rides in the HTTP answer, within the window or with
the user's next message; WeChat's retries of one message get it too, and it is handled once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_openai import FakeOpenAI
from fake_wechat import ACCOUNT, OPENID, Answer, FakeWeChatApi, WeChatServer, text_xml
from harness import RunningHub, eventually, pg_database, running_hub
from sqlalchemy import func, select
from test_wechat import AES_KEY, CHAT, TOKEN, settings_for

from hub.channels.base import SendRequest
from hub.channels.wechat import WechatChannel, passive
from hub.events import Image, Message
from hub.i18n import texts
from hub.settings import Settings
from hub.storage.models import held_replies, inbox
from hub.storage.outbox import NewMessage

wechat = WeChatServer(TOKEN, AES_KEY)
# The notes around held replies, as a WeChat chat reads them (Chinese by default).
EARLIER, CURRENT, MORE = (texts("zh")(note) for note in (passive.EARLIER, passive.CURRENT, passive.MORE))


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
def settings(tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI) -> Settings:
    return settings_for(tmp_path, api, model, extra='reply_mode = "passive"')


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[RunningHub]:
    async with running_hub(settings) as h:
        yield h


def channel(h: RunningHub) -> WechatChannel:
    ch = h.hub.channels["wechat"]
    assert isinstance(ch, WechatChannel)
    return ch


async def count(h: RunningHub, table: Any) -> int:
    async with h.hub.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def content(answer: Answer) -> str:
    reply = wechat.open_reply(answer.text)
    assert reply["MsgType"] == "text", reply
    assert (reply["ToUserName"], reply["FromUserName"]) == (OPENID, ACCOUNT)
    return str(reply["Content"])


async def test_reply_ready_within_the_window_is_the_answer(
    hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    model.first_token_delay_s = 1.0
    answer = await wechat.post(hub.url, text_xml("你好", "991"))
    assert answer.status == 200
    assert content(answer) == "re: 你好"
    assert 1.0 <= answer.seconds < 4.5
    # Nothing was pushed, nothing is left held, and the outbox row is closed.
    assert api.server.calls("/cgi-bin/message/custom/send") == []
    assert await count(hub, held_replies) == 0
    assert [r["status"] for r in await hub.hub.outbox_repo.all_rows()] == ["sent"]


async def test_a_late_reply_is_given_with_the_next_message(
    hub: RunningHub, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    passive = channel(hub).passive
    assert passive is not None
    passive.wait_s = 1.0  # the window, shortened for the test
    model.first_token_delay_s = 2.0
    first = await wechat.post(hub.url, text_xml("first question", "992"))
    assert (first.status, first.text) == (200, "success")
    assert first.seconds < 1.8

    async def held() -> bool:
        return await count(hub, held_replies) == 1

    await eventually(held)
    model.first_token_delay_s = 0.0
    second = await wechat.post(hub.url, text_xml("second question", "993"))
    text = content(second)
    assert text == f"{EARLIER}\nre: first question\n\n{CURRENT}\nre: second question"
    assert await count(hub, held_replies) == 0
    assert api.server.calls("/cgi-bin/message/custom/send") == []


async def test_retries_within_the_window_get_the_reply_and_it_is_handled_once(
    hub: RunningHub, model: FakeOpenAI
) -> None:
    model.first_token_delay_s = 1.5
    params, body = wechat.request(text_xml("retry me", "994"))

    async def deliver(give_up_after: float | None) -> Answer | None:
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=give_up_after)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.post(f"{hub.url}/webhooks/wechat", params=params, data=body.encode()) as resp:
                    return Answer(resp.status, await resp.text(), time.monotonic() - started)
        except TimeoutError:
            return None

    # WeChat gives up on the first delivery and retries the same MsgId while the model works.
    assert await deliver(0.4) is None
    retry = await deliver(None)
    assert retry is not None and content(retry) == "re: retry me"
    # A retry of a message already answered gets the same answer again.
    again = await deliver(None)
    assert again is not None and content(again) == "re: retry me" and again.seconds < 1.0
    assert len(model.requests) == 1
    assert await count(hub, inbox) == 1


async def test_messages_that_get_no_reply_are_answered_at_once(hub: RunningHub) -> None:
    xml = (
        f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{OPENID}</FromUserName><CreateTime>1</CreateTime>"
        "<MsgType>location</MsgType><Location_X>1</Location_X><Location_Y>2</Location_Y><Label>x</Label>"
        "<MsgId>995</MsgId></xml>"
    )
    answer = await wechat.post(hub.url, xml)
    assert (answer.status, answer.text) == (200, "success")
    assert answer.seconds < 1.0


async def test_media_is_uploaded_when_held_and_given_alone(hub: RunningHub, api: FakeWeChatApi) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"i" * 300
    # A finished job for this user, while the account can only answer.
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message((Image(data=png, name="cat.png"),)), quote="990"))

    async def held() -> bool:
        return await count(hub, held_replies) == 1

    await eventually(held)
    assert [(u.type, u.data) for u in api.uploads()] == [("image", png)]
    answer = await wechat.post(hub.url, text_xml("anything new?", "996"))
    reply = wechat.open_reply(answer.text)
    assert reply["MsgType"] == "image"
    assert reply["Image"]["MediaId"] == "MEDIA-1"
    # The reply to that message waits for the next one.
    assert await count(hub, held_replies) == 1
    nxt = await wechat.post(hub.url, text_xml("ok", "997"))
    assert content(nxt) == f"{EARLIER}\nre: anything new?\n\n{CURRENT}\nre: ok"


async def test_long_replies_come_a_part_per_message(hub: RunningHub) -> None:
    long = "很长的回答。" * 500  # 9,000 bytes: several passive texts
    await hub.hub.outbox.put(NewMessage(target=CHAT, message=Message.of(long), quote="earlier"))

    async def held() -> bool:
        return await count(hub, held_replies) > 0

    await eventually(held)
    passive = channel(hub).passive
    assert passive is not None
    passive.wait_s = 0.5
    got: list[str] = []
    head = f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{OPENID}</FromUserName><CreateTime>1</CreateTime>"
    for i in range(8):
        # Messages that get no reply of their own (a location): each answer is the next part.
        text = content(await wechat.post(hub.url, f"{head}<MsgType>location</MsgType><MsgId>98{i}</MsgId></xml>"))
        assert len(text.encode()) <= 2048
        got.append(text)
        if not text.endswith(MORE):
            break
    assert got[0].startswith(EARLIER) and got[-1].endswith("很长的回答。")
    body = "".join(t.removeprefix(f"{EARLIER}\n").removesuffix(f"\n\n{MORE}") for t in got)
    assert body == long
    assert await count(hub, held_replies) == 0


async def test_a_held_reply_survives_a_restart(settings: Settings, api: FakeWeChatApi, model: FakeOpenAI) -> None:
    async with running_hub(settings) as h:
        await h.hub.outbox.put(NewMessage(target=CHAT, message=Message.of("kept for you"), quote="998"))

        async def held() -> bool:
            return await count(h, held_replies) == 1

        await eventually(held)
    async with running_hub(settings) as h:
        model.first_token_delay_s = 0.0
        answer = await wechat.post(h.url, text_xml("back again", "999"))
        assert content(answer) == f"{EARLIER}\nkept for you\n\n{CURRENT}\nre: back again"


async def test_two_waiting_requests_never_give_one_reply_twice(hub: RunningHub, model: FakeOpenAI) -> None:
    passive = channel(hub).passive
    assert passive is not None
    passive.wait_s = 1.0
    model.first_token_delay_s = 0.3
    a, b = await asyncio.gather(
        wechat.post(hub.url, text_xml("one", "9910")), wechat.post(hub.url, text_xml("two", "9911"))
    )
    texts = [content(x) if x.text != "success" else "" for x in (a, b)]
    joined = "\n".join(texts)
    assert joined.count("re: one") == 1 and joined.count("re: two") == 1
    assert await count(hub, held_replies) == 0


async def test_a_reply_held_by_another_process_reaches_the_waiting_request(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    async with pg_database() as url:
        extra = f'reply_mode = "passive"\n\n[database]\nurl = "{url}"\n'
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        a_settings, b_settings = (settings_for(tmp_path / n, api, model, extra=extra) for n in ("a", "b"))
        async with running_hub(a_settings) as a, running_hub(b_settings) as b:
            await a.hub.outbox.stop()  # only the other process sends (holds) replies
            model.first_token_delay_s = 0.5
            answer = await wechat.post(a.url, text_xml("across processes", "9920"))
            assert content(answer) == "re: across processes"
            assert answer.seconds < 4.5
            assert await count(b, held_replies) == 0


async def test_the_same_reply_handed_over_twice_is_held_once(
    hub: RunningHub, api: FakeWeChatApi, tmp_path: Path
) -> None:
    picture = tmp_path / "p.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    message = Message.of("look:", Image(path=str(picture)))
    # The outbox hands a reply over again when the process died before marking it sent.
    await channel(hub).send(SendRequest(CHAT, message, quote="9930"))
    await channel(hub).send(SendRequest(CHAT, message, quote="9930"))
    assert len(api.uploads()) == 2  # uploaded each time: the media ids differ
    assert await count(hub, held_replies) == 2  # the text and the image, once
