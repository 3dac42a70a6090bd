"""The spine's promises, end to end over real HTTP, through the tests' own platform."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fakechan import SECRET, FakeChannel
from harness import (
    ROOT,
    FakeServer,
    HubProcess,
    RunningHub,
    eventually,
    make_settings,
    running_hub,
    sse_items,
    text_of,
    web_chat,
)

from hub.events import ChatRef, Image, Message
from hub.storage.outbox import NewMessage


@pytest.fixture
async def platform() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    counter = iter(range(1, 10**6))
    fake.on("POST", "/send", lambda r: {"ok": True, "message_id": str(next(counter))})
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(tmp_path: Path, platform: FakeServer) -> AsyncIterator[RunningHub]:
    settings = make_settings(tmp_path, "[http]\nmax_body_bytes = 4096\n")
    channel = FakeChannel(platform.url)
    async with running_hub(settings, extra_channels=[channel]) as h:
        channel.bind(h.hub.dispatcher)
        yield h


async def post_event(url: str, body: Any, *, secret: str | None = SECRET, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"X-Fake-Secret": secret} if secret is not None else {}
    data = raw if raw is not None else json.dumps(body).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/webhooks/fake", data=data, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_the_same_event_twice_yields_one_reply(hub: RunningHub, platform: FakeServer) -> None:
    event = {"id": "ev-1", "chat": "c1", "text": "/help"}
    results = await asyncio.gather(*(post_event(hub.url, event) for _ in range(3)))
    assert [s for s, _ in results] == [200, 200, 200]
    assert sorted(b["new"] for _, b in results) == [False, False, True]
    await platform.wait_for(lambda: len(platform.calls("/send")) >= 1)
    status, _ = await post_event(hub.url, event)  # a late retry, after handling
    assert status == 200
    await asyncio.sleep(0.5)
    sends = platform.calls("/send")
    assert len(sends) == 1
    assert sends[0].json["chat"] == "fake:private:c1" and "/help" in sends[0].json["text"]
    assert sends[0].json["quote"] == "ev-1"


async def test_500_then_429_then_200_delivers_once_after_retry_after(hub: RunningHub, platform: FakeServer) -> None:
    platform.queue(
        "POST",
        "/send",
        web.json_response({"ok": False}, status=500),
        web.json_response({"ok": False, "retry_after": 2}, status=429),
    )
    status, _ = await post_event(hub.url, {"id": "r1", "text": "/help"})
    assert status == 200
    await platform.wait_for(lambda: len(platform.calls("/send")) >= 3, timeout=20)
    await asyncio.sleep(0.5)
    calls = platform.calls("/send")
    assert len(calls) == 3
    assert calls[2].at - calls[1].at >= 2.0, "sent sooner than retry_after allowed"
    rows = await hub.hub.outbox_repo.all_rows()
    assert [(r["status"], r["attempts"]) for r in rows] == [("sent", 2)]
    assert rows[0]["sent_ids"] == ["1"]


async def test_a_final_refusal_is_recorded_not_retried(hub: RunningHub, platform: FakeServer) -> None:
    platform.queue("POST", "/send", web.json_response({"ok": False}, status=403))
    await post_event(hub.url, {"id": "f1", "text": "/help"})
    await eventually(lambda: hub.hub.outbox_repo.all_rows(), timeout=5)

    async def failed() -> bool:
        rows = await hub.hub.outbox_repo.all_rows()
        return bool(rows) and rows[0]["status"] == "failed"

    await eventually(failed)
    assert len(platform.calls("/send")) == 1
    assert "403" in (await hub.hub.outbox_repo.all_rows())[0]["last_error"]


async def test_group_text_without_mention_gets_nothing(hub: RunningHub, platform: FakeServer) -> None:
    await post_event(hub.url, {"id": "g1", "chat": "g", "group": True, "text": "hello all"})
    await post_event(hub.url, {"id": "g2", "chat": "g", "group": True, "text": "/help@FakeBot"})
    await platform.wait_for(lambda: len(platform.calls("/send")) >= 1)
    await asyncio.sleep(0.3)
    (only,) = platform.calls("/send")
    assert only.json["chat"] == "fake:group:g" and only.json["quote"] == "g2"


async def test_bad_input_gets_4xx_and_loses_nothing(hub: RunningHub, platform: FakeServer) -> None:
    assert (await post_event(hub.url, {"id": "ok-1", "text": "/help"}))[0] == 200
    cases = [
        await post_event(hub.url, None, raw=b"{not json"),
        await post_event(hub.url, ["a", "list"]),
        await post_event(hub.url, {"id": 5, "text": None}),
        await post_event(hub.url, None, raw=b"\xff\xfe\x00garbage"),
        await post_event(hub.url, {"id": "big", "text": "x" * 10_000}),
        await post_event(hub.url, {"id": "nosecret", "text": "hi"}, secret=None),
        await post_event(hub.url, {"id": "badsecret", "text": "hi"}, secret="guess"),
    ]
    assert [c[0] for c in cases] == [400, 400, 400, 400, 413, 401, 401]
    assert all("error" in body and body["error"] for _, body in cases)
    async with aiohttp.ClientSession() as http:
        for method, path, body in [
            ("GET", "/no/such/path", None),
            ("GET", "/webhooks/fake", None),
            ("POST", "/api/web/chat", b"{oops"),
            ("POST", "/api/web/chat", json.dumps({"session": "s", "text": 3}).encode()),
            ("POST", "/api/web/chat", json.dumps({"session": "bad session!", "text": "x"}).encode()),
            ("POST", "/api/web/chat", json.dumps({"session": "s", "text": "x" * 5000}).encode()),
            ("GET", "/api/web/events?session=", None),
            ("GET", "/media/nonexistent", None),
            ("GET", "/media/..%2F..%2Fhub.db", None),
        ]:
            async with http.request(method, f"{hub.url}{path}", data=body) as resp:
                assert 400 <= resp.status < 500, (method, path, resp.status)
                assert (await resp.json(content_type=None))["error"]
    # Still serving, and what was stored before is handled.
    assert (await post_event(hub.url, {"id": "ok-2", "text": "/help"}))[0] == 200
    await platform.wait_for(lambda: len(platform.calls("/send")) >= 2)
    assert {c.json["quote"] for c in platform.calls("/send")} == {"ok-1", "ok-2"}
    for event_id in ("nosecret", "badsecret", "big"):
        assert await hub.hub.inbox.get("fake", event_id) is None


async def test_web_chat_streams_the_contract_format(hub: RunningHub) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hub.url}/api/web/chat", json={"session": "s1", "text": "/help"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = (await resp.read()).decode()
    events = [block for block in raw.split("\n\n") if block]
    assert events[-1] == "data: [DONE]"
    for block in events:
        for line in block.split("\n"):
            assert line.startswith("data: ") or line.startswith(":"), line
    content = "".join(json.loads(b[6:])["content"] for b in events[:-1] if b.startswith("data: {"))
    assert "/help" in content
    chat_items = await web_chat(hub.url, "s1", "hello there")
    assert "model" in text_of(chat_items).lower()  # no model configured: how to configure one


async def test_web_events_stream_delivers_later_messages_kept_while_offline(hub: RunningHub) -> None:
    h = hub.hub
    target = ChatRef("web", "private", "page-1")
    png = b"\x89PNG\r\n\x1a\nfake"
    # Queued while no page is connected: kept and sent when it connects.
    await h.outbox.put(
        NewMessage(
            target,
            Message(
                (Image(data=png, name="cat.png", mime="image/png"),),
            ),
        )
    )
    await h.outbox.put(NewMessage(target, Message.of("your job #7f3a is done")))

    async def sent() -> bool:
        return all(r["status"] == "sent" for r in await h.outbox_repo.all_rows())

    await eventually(sent)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hub.url}/api/web/events", params={"session": "page-1"}) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            items = await sse_items(resp, until_done=2)
            media = items[0]["media"]
            assert media["type"] == "image" and media["url"].startswith("/media/") and media["name"] == "cat.png"
            assert items[1] == "[DONE]" and items[2] == {"content": "your job #7f3a is done"} and items[3] == "[DONE]"
            async with http.get(f"{hub.url}{media['url']}") as m:
                assert m.status == 200 and await m.read() == png
            # While connected: a new message arrives on the open stream.
            await h.outbox.put(NewMessage(target, Message.of("live one")))
            assert await sse_items(resp, until_done=1) == [{"content": "live one"}, "[DONE]"]
    # Already delivered: a new connection gets nothing old.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hub.url}/api/web/events", params={"session": "page-1"}) as resp:
            with pytest.raises(asyncio.TimeoutError):
                await sse_items(resp, until_done=1, timeout=1.0)


async def test_web_token_guards_the_api(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, '[web]\ntoken = "s3cret"\n')
    async with running_hub(settings) as h, aiohttp.ClientSession() as http:
        async with http.get(f"{h.url}/") as resp:
            assert resp.status == 200 and "<html" in (await resp.text()).lower()
        async with http.post(f"{h.url}/api/web/chat", json={"session": "s", "text": "/help"}) as resp:
            assert resp.status == 401
        async with http.post(
            f"{h.url}/api/web/chat", json={"session": "s", "text": "/help"}, headers={"Authorization": "Bearer wrong"}
        ) as resp:
            assert resp.status == 401
        async with http.post(
            f"{h.url}/api/web/chat", json={"session": "s", "text": "/help"}, headers={"Authorization": "Bearer s3cret"}
        ) as resp:
            assert resp.status == 200 and "/help" in text_of(await sse_items(resp))


async def test_healthz_and_metrics(hub: RunningHub, platform: FakeServer) -> None:
    await post_event(hub.url, {"id": "m1", "text": "/help"})
    await platform.wait_for(lambda: len(platform.calls("/send")) >= 1)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hub.url}/healthz") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["status"] == "ok" and body["channels"]["fake"] == "running"
        await eventually(lambda: True)
        await asyncio.sleep(0.2)
        async with http.get(f"{hub.url}/metrics") as resp:
            metrics = await resp.text()
    assert 'hub_events_in_total{channel="fake"} 1.0' in metrics
    assert 'hub_replies_out_total{channel="fake"} 1.0' in metrics
    assert "hub_outbox_backlog 0.0" in metrics and "hub_handling_seconds_bucket" in metrics


@pytest.mark.slow
async def test_killed_after_ack_before_handling_is_handled_once_after_restart(
    tmp_path: Path, platform: FakeServer
) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    script = str(ROOT / "tests" / "fake_hub.py")
    first = HubProcess([script, str(cfg), platform.url], {"FAKE_SLOW_S": "120"}, tmp_path)
    await first.start()
    try:
        for i in range(5):
            status, body = await post_event(first.url, {"id": f"k{i}", "chat": f"c{i}", "text": f"/slow {i}"})
            assert (status, body["new"]) == (200, True)
    finally:
        first.kill()
    assert platform.calls("/send") == []
    second = HubProcess([script, str(cfg), platform.url], {"FAKE_SLOW_S": "0"}, tmp_path)
    await second.start()
    try:
        await platform.wait_for(lambda: len(platform.calls("/send")) >= 5, timeout=20)
        # A redelivery from the platform after the restart is still a duplicate.
        status, body = await post_event(second.url, {"id": "k0", "chat": "c0", "text": "/slow 0"})
        assert (status, body["new"]) == (200, False)
        await asyncio.sleep(1.0)
        texts = sorted(c.json["text"] for c in platform.calls("/send"))
        assert texts == [f"slow done: {i}" for i in range(5)]
    finally:
        assert second.terminate() == 0, second.logs()


@pytest.mark.slow
async def test_hub_run_default_start_and_sigterm(tmp_path: Path) -> None:
    proc = HubProcess(["-m", "hub", "run"], {"HUB_HTTP__PORT": "0"}, tmp_path)
    started = time.monotonic()
    url = await proc.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            # An open event stream must not hold the shutdown.
            stream = await http.get(f"{url}/api/web/events", params={"session": "x"})
            await stream.content.readline()
            t0 = time.monotonic()
            assert proc.terminate(timeout=12) == 0, proc.logs()
            assert time.monotonic() - t0 < 10
            stream.close()
    finally:
        proc.kill()
    assert (tmp_path / "data" / "hub.db").exists()
    assert time.monotonic() - started < 30
