"""The delivery API end to end: other systems send to chats through the outbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_telegram import BLOCKED, FakeTelegram, telegram_toml
from fake_wechat import APP_ID, APP_SECRET, OPENID, FakeWeChatApi
from harness import RunningHub, eventually, make_settings, running_hub

API_TOKEN = "api-token-0123456789"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
GROUP = "-1001234567890"


def api_toml(extra: str = "") -> str:
    return f'[api]\ntoken = "{API_TOKEN}"\n{extra}'


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def wx() -> AsyncIterator[FakeWeChatApi]:
    fake = FakeWeChatApi()
    await fake.start()
    yield fake
    await fake.stop()


def wechat_toml(api_base: str) -> str:
    return (
        f'[wechat]\nenabled = true\napp_id = "{APP_ID}"\napp_secret = "{APP_SECRET}"\ntoken = "t"\n'
        f'encoding_aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"\napi_base = "{api_base}"\n'
    )


@pytest.fixture
async def hub(tmp_path: Path, tg: FakeTelegram, wx: FakeWeChatApi) -> AsyncIterator[RunningHub]:
    settings = make_settings(tmp_path, telegram_toml(tg.url) + wechat_toml(wx.url) + api_toml())
    async with running_hub(settings) as h:
        yield h


async def post(
    url: str, body: Any, *, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    hdrs = {**AUTH, "Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as http:
        data = raw if raw is not None else __import__("json").dumps(body).encode()
        async with http.post(f"{url}/api/v1/messages", data=data, headers=hdrs) as resp:
            return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def status_of(url: str, item_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=AUTH) as http, http.get(f"{url}/api/v1/messages/{item_id}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_a_message_to_a_telegram_group_and_a_wechat_user_arrives_once(
    hub: RunningHub, tg: FakeTelegram, wx: FakeWeChatApi
) -> None:
    status, body, _ = await post(hub.url, {"to": f"telegram:group:{GROUP}", "text": "build 412 failed"})
    assert status == 202 and body["status"] == "queued" and body["id"].isdigit()
    await tg.wait_for(lambda: len(tg.delivered()) == 1)
    (sent,) = tg.delivered()
    assert (sent.params["chat_id"], sent.params["text"]) == (GROUP, "build 412 failed")
    await eventually(lambda: _sent(hub.url, body["id"]))
    final = await status_of(hub.url, body["id"])
    assert final["to"] == f"telegram:group:{GROUP}" and final["attempts"] >= 0 and final["sent_at"]

    status, body, _ = await post(hub.url, {"to": f"wechat:private:{OPENID}", "text": "你的订单已发货"})
    assert status == 202
    await eventually(lambda: len(wx.sent()) == 1)
    assert wx.sent()[0]["touser"] == OPENID and wx.sent()[0]["text"]["content"] == "你的订单已发货"
    await asyncio.sleep(0.3)
    assert len(tg.delivered()) == 1 and len(wx.sent()) == 1


async def _sent(url: str, item_id: str) -> bool:
    return (await status_of(url, item_id))["status"] == "sent"


async def test_the_same_idempotency_key_sends_once_and_another_body_is_409(hub: RunningHub, tg: FakeTelegram) -> None:
    msg = {"to": "telegram:private:42", "text": "daily report"}
    answers = [await post(hub.url, msg, headers={"Idempotency-Key": "report-2026-12-02"}) for _ in range(3)]
    assert [a[0] for a in answers] == [202, 202, 202]
    assert len({a[1]["id"] for a in answers}) == 1
    status, body, _ = await post(
        hub.url, {**msg, "text": "another report"}, headers={"Idempotency-Key": "report-2026-12-02"}
    )
    assert status == 409 and "another body" in body["error"]
    await tg.wait_for(lambda: len(tg.delivered()) == 1)
    await asyncio.sleep(0.5)
    assert [c.params["text"] for c in tg.delivered()] == ["daily report"]


async def test_a_wrong_or_missing_token_is_401_and_sends_nothing(hub: RunningHub, tg: FakeTelegram) -> None:
    msg = {"to": "telegram:private:42", "text": "x"}
    for auth in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}, {"Authorization": "Basic " + API_TOKEN}):
        status, _, headers = await post(hub.url, msg, headers=auth)
        assert status == 401 and "Bearer" in headers.get("WWW-Authenticate", "")
    # The scheme is case-insensitive.
    assert (await post(hub.url, msg, headers={"Authorization": f"bearer {API_TOKEN}"}))[0] == 202
    await tg.wait_for(lambda: len(tg.delivered()) == 1)
    async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/api/v1/messages/1") as resp:
        assert resp.status == 401


BAD = [
    ({"to": "slack:private:1", "text": "x"}, "to", "unknown channel"),
    ({"to": "telegram-private-1", "text": "x"}, "to", "not a chat reference"),
    ({"to": "telegram:room:1", "text": "x"}, "to", "not a chat reference"),
    ({"to": "feishu:group:oc_1", "text": "x"}, "to", "not enabled"),
    ({"to": "telegram:private:1", "text": "  "}, "text", "nothing to send"),
    ({"to": "telegram:private:1"}, "text", "nothing to send"),
    ({"to": "telegram:private:1", "text": 5}, "text", "string"),
    ({"to": "telegram:private:1", "media": [{"type": "sticker", "url": "https://x/y.png"}]}, "media.0.type", "type"),
    ({"to": "telegram:private:1", "media": [{"type": "image", "url": "ftp://x/y.png"}]}, "media.0.url", "http"),
    ({"to": "telegram:private:1", "media": [{"type": "image"}]}, "media.0", "exactly one"),
    ({"to": "telegram:private:1", "media": [{"type": "image", "media_id": "nope0000"}]}, "media.0.media_id", "no such"),
    # WeChat's customer-service API has no file message, and without public_url no link either.
    ({"to": f"wechat:private:{OPENID}", "media": [{"type": "file", "url": "https://x/a.pdf"}]}, "media.0", "cannot"),
    ({"to": "telegram:private:1", "text": "x", "extra": 1}, "extra", "unknown field"),
    # Longer than the 255-character columns, or with a NUL: 400, never a database error.
    ({"to": "telegram:private:" + "1" * 300, "text": "x"}, "to", "longer than"),
    ({"to": "telegram:private:1\u0000", "text": "x"}, "to", "printable"),
    ([1, 2], None, "JSON object"),
]


@pytest.mark.parametrize(("body", "field", "words"), BAD)
async def test_bad_input_is_400_naming_the_field_and_sends_nothing(
    hub: RunningHub, tg: FakeTelegram, body: Any, field: str | None, words: str
) -> None:
    status, answer, _ = await post(hub.url, body)
    assert status == 400, answer
    assert answer["field"] == field and words in answer["error"]
    assert await hub.hub.outbox_repo.backlog() == 0


async def test_bodies_that_are_not_json_are_refused(hub: RunningHub) -> None:
    assert (await post(hub.url, None, raw=b"[" * 100_000))[0] == 400
    assert (await post(hub.url, None, raw=b"to=telegram", headers={"Content-Type": "text/plain"}))[0] == 400
    assert (await post(hub.url, None, raw=b"\xff\xfe"))[0] == 400


async def test_a_permanent_refusal_makes_the_status_failed(hub: RunningHub, tg: FakeTelegram) -> None:
    tg.script("sendMessage", BLOCKED)
    status, body, _ = await post(hub.url, {"to": "telegram:private:77", "text": "hello"})
    assert status == 202

    async def failed() -> bool:
        return (await status_of(hub.url, body["id"]))["status"] == "failed"

    await eventually(failed)
    final = await status_of(hub.url, body["id"])
    assert "blocked" in final["error"] and final["sent_at"] is None
    # Bot replies are not the API's business: their ids are not found.
    assert (await post(hub.url, {"to": "telegram:private:77", "text": "again"}))[0] == 202


async def test_uploaded_media_goes_out_as_a_photo(hub: RunningHub, tg: FakeTelegram) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    form = aiohttp.FormData()
    form.add_field("file", png, filename="chart.png", content_type="image/png")
    async with aiohttp.ClientSession(headers=AUTH) as http, http.post(f"{hub.url}/api/v1/media", data=form) as resp:
        assert resp.status == 200
        media_id = (await resp.json())["media_id"]
    status, body, _ = await post(
        hub.url, {"to": "telegram:private:42", "text": "today", "media": [{"type": "image", "media_id": media_id}]}
    )
    assert status == 202, body
    await tg.wait_for(lambda: len(tg.calls("sendPhoto")) == 1)
    photo = tg.calls("sendPhoto")[0].file("photo")
    assert photo is not None and photo.data == png


async def test_uploads_over_the_cap_are_413(tmp_path: Path, tg: FakeTelegram) -> None:
    settings = make_settings(tmp_path, telegram_toml(tg.url) + api_toml("max_media_mb = 1\n"))
    async with running_hub(settings) as h:
        form = aiohttp.FormData()
        form.add_field("file", b"x" * (1024 * 1024 + 1), filename="big.bin")
        async with aiohttp.ClientSession(headers=AUTH) as http, http.post(f"{h.url}/api/v1/media", data=form) as resp:
            assert resp.status == 413


async def test_rate_limit_per_token_is_429_with_retry_after(tmp_path: Path, tg: FakeTelegram) -> None:
    settings = make_settings(tmp_path, telegram_toml(tg.url) + api_toml("rate_per_minute = 3\n"))
    async with running_hub(settings) as h:
        msg = {"to": "telegram:private:42", "text": "x"}
        answers = [await post(h.url, msg) for _ in range(4)]
        assert [a[0] for a in answers] == [202, 202, 202, 429]
        assert int(answers[3][2]["Retry-After"]) >= 1
        async with aiohttp.ClientSession() as http, http.get(f"{h.url}/metrics") as resp:
            text = await resp.text()
        assert 'hub_api_messages_total{status="queued"} 3.0' in text
        assert 'hub_api_messages_total{status="rate_limited"} 1.0' in text


async def test_without_a_token_there_is_no_api(tmp_path: Path, tg: FakeTelegram) -> None:
    async with running_hub(make_settings(tmp_path, telegram_toml(tg.url))) as h:
        assert (await post(h.url, {"to": "telegram:private:1", "text": "x"}))[0] == 404


async def test_a_cut_off_upload_is_400_and_stores_nothing(hub: RunningHub) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc'
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
    url = f"{hub.url}/api/v1/media"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 400 and (await resp.json())["field"] == "file"
    media_dir = hub.hub.media.directory
    assert not media_dir.exists() or not any(media_dir.iterdir())


async def test_a_wechat_user_outside_the_48_hour_window_is_failed_with_the_reason(
    hub: RunningHub, wx: FakeWeChatApi
) -> None:
    # WeChat lets a bot write only within 48 h of the user's last message: said, not dropped.
    wx.fail_next("/cgi-bin/message/custom/send", 45015, "response out of time limit")
    status, body, _ = await post(hub.url, {"to": f"wechat:private:{OPENID}", "text": "your order shipped"})
    assert status == 202

    async def failed() -> bool:
        return (await status_of(hub.url, body["id"]))["status"] == "failed"

    await eventually(failed)
    final = await status_of(hub.url, body["id"])
    assert "45015" in final["error"] and "48-hour window" in final["error"]
