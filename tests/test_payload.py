"""Malformed and hostile bodies on every inbound path are 400 (never 500) and never stored; the
Telegram secret is a 403 whatever bytes it holds; the parsing helper's own rules."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fake_telegram import SECRET, message_update, telegram_toml
from fake_wechat import ACCOUNT, APP_ID, APP_SECRET, OPENID, WeChatServer, text_xml
from harness import RunningHub, make_settings, running_hub
from sqlalchemy import func, select
from test_wechat_units import OA_AES, OA_TOKEN

from hub.channels.payload import MAX_DEPTH, parse_json, parse_xml
from hub.channels.wechat.inbound import parse_inbound
from hub.errors import BadPayload
from hub.events import Unsupported
from hub.storage.models import inbox

DEEP_JSON = b"[" * 100_000
WECHAT_TOML = f"""
[wechat]
enabled = true
app_id = "{APP_ID}"
app_secret = "{APP_SECRET}"
token = "{OA_TOKEN}"
api_base = "http://127.0.0.1:9"
"""


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    settings = make_settings(tmp_path, telegram_toml("http://127.0.0.1:9") + WECHAT_TOML)
    async with running_hub(settings) as h:
        yield h


async def stored(h: RunningHub) -> int:
    async with h.hub.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(inbox))).scalar_one())


async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status


async def test_deeply_nested_json_is_400_on_the_web_chat_and_telegram(hub: RunningHub) -> None:
    web = {"Content-Type": "application/json"}
    assert await post(f"{hub.url}/api/web/chat", DEEP_JSON, web) == 400
    nested = b'{"session": "s1", "text": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert await post(f"{hub.url}/api/web/chat", nested, web) == 400
    tg = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET}
    assert await post(f"{hub.url}/webhooks/telegram", DEEP_JSON, tg) == 400
    update = b'{"update_id": 5, "message": {"message_id": ' + b"[" * 100_000 + b"}}"
    assert await post(f"{hub.url}/webhooks/telegram", update, tg) == 400
    assert await stored(hub) == 0


async def test_out_of_range_telegram_ids_are_400_and_not_stored(hub: RunningHub) -> None:
    import json

    tg = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET}
    for update in (
        message_update("hi", update_id=10**200),
        message_update("hi", chat_id=10**300),
        {**message_update("hi"), "update_id": True},
    ):
        assert await post(f"{hub.url}/webhooks/telegram", json.dumps(update).encode(), tg) == 400
    assert await post(f"{hub.url}/webhooks/telegram", json.dumps(message_update("ok")).encode(), tg) == 200
    assert await stored(hub) == 1


async def test_a_telegram_secret_with_non_ascii_bytes_is_403(hub: RunningHub) -> None:
    import asyncio

    port = int(hub.url.rsplit(":", 1)[1])
    for secret in (b"\xff\xfe-not-utf8", "秘密".encode(), SECRET.encode() + b"\x80"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"update_id": 1}'
        writer.write(
            b"POST /webhooks/telegram HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"X-Telegram-Bot-Api-Secret-Token: " + secret + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        status_line = await reader.readline()
        writer.close()
        assert status_line.split(b" ")[1] == b"403", (secret, status_line)


async def test_wechat_fields_holding_elements_or_bad_ids_are_400_and_not_stored(hub: RunningHub) -> None:
    wechat = WeChatServer(OA_TOKEN)
    good = text_xml("hello", "6054768590064713728")
    bad = [
        good.replace("<![CDATA[hello]]>", "<a><b>nested</b></a>"),
        good.replace("<![CDATA[hello]]>", "<a>" * 20_000 + "x" + "</a>" * 20_000),
        good.replace(f"<![CDATA[{OPENID}]]>", "<![CDATA[o:evil#1]]>"),
        good.replace("<MsgId>6054768590064713728</MsgId>", "<MsgId>p-1</MsgId>"),
        good.replace("<Content>", '<Content lang="x">'),
        good.replace("</xml>", "<Content>again</Content></xml>"),
        good.replace("<CreateTime>", "<CreateTime>soon"),
        '<!DOCTYPE xml [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>' + good.replace("hello", "&b;"),
        '<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + good.replace("<![CDATA[hello]]>", "&e;"),
    ]
    for xml in bad:
        assert (await wechat.post(hub.url, xml)).status == 400, xml[:120]
    assert (await wechat.post(hub.url, good)).status == 200
    assert await stored(hub) == 1


async def test_wechat_safe_mode_nested_fields_are_400(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, WECHAT_TOML + f'encoding_aes_key = "{OA_AES}"\n')
    async with running_hub(settings) as h:
        wechat = WeChatServer(OA_TOKEN, OA_AES)
        xml = text_xml("hi", "1").replace(f"<![CDATA[{OPENID}]]>", "<a>" * 20_000 + "</a>" * 20_000)
        assert (await wechat.post(h.url, xml)).status == 400
        assert (await wechat.post(h.url, text_xml("hi", "2"))).status == 200
        assert await stored(h) == 1


def test_parse_json_rules() -> None:
    assert parse_json(b'{"a": [1, "\\u00e9", "\\ud83d\\ude00"]}') == {"a": [1, "é", "😀"]}
    nested = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json(nested) is not None
    for raw in (DEEP_JSON, b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), b'"\\ud800"', b'{"\\udc00": 1}',
                b"NaN", b"[1e5, Infinity]", b"1" * 5000, b"\xff", '"é"'.encode("utf-16"), b""):  # fmt: skip
        with pytest.raises(BadPayload):
            parse_json(raw)


def test_parse_xml_rules() -> None:
    assert parse_xml("<xml><A>é</A><B/></xml>".encode()) == {"A": "é", "B": None}
    for raw in (
        b"<xml><A>\xff</A></xml>",
        b'<?xml version="1.0" encoding="ISO-8859-1"?><xml><A>\xe9</A></xml>',  # read as UTF-8 only
        b'<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/x.dtd"><xml/>',
        b"<root><A>1</A></root>",
        b"<xml>text</xml>",
        b"",
    ):
        with pytest.raises(BadPayload):
            parse_xml(raw)


def test_parse_inbound_keeps_documented_fields() -> None:
    head = f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{OPENID}</FromUserName>"
    head += f"<CreateTime>{int(time.time())}</CreateTime>"
    # Fields the hub does not read may hold elements (menu events carry ScanCodeInfo).
    msg = parse_inbound(
        head + "<MsgType>event</MsgType><Event>scancode_push</Event><EventKey>k</EventKey>"
        "<ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>1</ScanResult></ScanCodeInfo></xml>",
        enterprise=False,
    )
    assert (msg.kind, msg.event, msg.sender) == ("event", "scancode_push", OPENID)
    with pytest.raises(BadPayload):
        parse_inbound(head + "<MsgType>event</MsgType></xml>", enterprise=False)  # an event names itself


def test_a_follow_by_qr_code_names_its_scene() -> None:
    xml = (
        f"<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{OPENID}</FromUserName><CreateTime>1</CreateTime>"
        "<MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_123123</EventKey></xml>"
    )
    msg = parse_inbound(xml, enterprise=False)
    assert (msg.event, msg.message.segments[0]) == ("subscribe_scan", Unsupported("event:subscribe_scan", "123123"))
