"""The Feishu long connection against the fake's websocket endpoint (lark's protobuf frames)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_feishu import USER_OPEN_ID, FakeFeishu, feishu_toml, message_event
from harness import RunningHub, eventually, make_settings, pg_database, running_hub

from hub.channels.feishu import FeishuChannel


@pytest.fixture
async def fs() -> AsyncIterator[FakeFeishu]:
    fake = FakeFeishu()
    await fake.start()
    yield fake
    await fake.stop()


def channel(h: RunningHub) -> FeishuChannel:
    ch = h.hub.channels["feishu"]
    assert isinstance(ch, FeishuChannel)
    return ch


async def test_events_come_over_the_long_connection_and_are_acked_once_stored(tmp_path: Path, fs: FakeFeishu) -> None:
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url, mode="websocket"))) as h:
        await fs.wait_for(lambda: len(fs.sockets) == 1)
        assert fs.of("/callback/ws/endpoint")[0].json == {
            "AppID": "cli_a1b2c3d4e5f6a7b8",
            "AppSecret": "fake-app-secret",
        }
        event = message_event("/help")
        frame_id = await fs.push(event)
        await fs.wait_for(lambda: frame_id in fs.acked)
        row = await h.hub.inbox.get("feishu", event["header"]["event_id"])
        assert row is not None  # stored before the ack
        await fs.wait_for(lambda: len(fs.messages()) == 1)
        assert fs.messages()[0].json["receive_id"] == USER_OPEN_ID
        # The platform delivering it again changes nothing.
        again = await fs.push(event)
        await fs.wait_for(lambda: again in fs.acked)
        await asyncio.sleep(0.5)
        assert len(fs.messages()) == 1
        await eventually(lambda: channel(h).status() == "running")


async def test_a_dropped_connection_is_reconnected_and_nothing_is_lost(tmp_path: Path, fs: FakeFeishu) -> None:
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url, mode="websocket"))):
        await fs.wait_for(lambda: len(fs.sockets) == 1)
        fs.ws_refuse = True  # the first reconnect attempts fail: backoff, then retry
        await fs.sockets[0].close()
        await fs.wait_for(lambda: not fs.sockets)
        events = [message_event("/help") for _ in range(3)]
        for event in events:
            await fs.push(event)  # kept by the platform until a connection acks it
        await fs.wait_for(lambda: len(fs.of("/callback/ws/endpoint")) >= 2)
        fs.ws_refuse = False
        await fs.wait_for(lambda: len(fs.acked) == 3, timeout=30)
        await fs.wait_for(lambda: len(fs.messages()) == 3)
        assert fs.connects == 2


async def test_only_the_leader_holds_the_long_connection_and_another_takes_over(tmp_path: Path, fs: FakeFeishu) -> None:
    async with pg_database() as url:
        for p in ("a", "b"):
            (tmp_path / p).mkdir()
        toml = f'[database]\nurl = "{url}"\n' + feishu_toml(fs.url, mode="websocket")
        a_settings, b_settings = (make_settings(tmp_path / p, toml) for p in ("a", "b"))
        async with running_hub(a_settings) as a:
            await fs.wait_for(lambda: len(fs.sockets) == 1)
            async with running_hub(b_settings) as b:
                await eventually(lambda: channel(b).status() == "standby")
                await asyncio.sleep(1.0)
                assert fs.connects == 1 and channel(a).status() == "running"
                await a.stop()  # the leader goes: the other connects
                await fs.wait_for(lambda: fs.connects == 2 and len(fs.sockets) == 1, timeout=30)
                event = message_event("/help")
                await fs.push(event)
                await fs.wait_for(lambda: len(fs.messages()) == 1)
                assert await b.hub.inbox.get("feishu", event["header"]["event_id"]) is not None


async def test_an_event_that_cannot_be_stored_is_not_acked_and_comes_again(tmp_path: Path, fs: FakeFeishu) -> None:
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url, mode="websocket"))) as h:
        await fs.wait_for(lambda: len(fs.sockets) == 1)
        inbox = h.hub.inbox
        real_store = inbox.store

        async def database_away(event: object) -> int | None:
            raise ConnectionError("database unreachable")

        inbox.store = database_away  # type: ignore[method-assign]
        event = message_event("/help")
        frame_id = await fs.push(event)
        await fs.wait_for(lambda: frame_id in fs.refused)
        assert frame_id in fs.pending and fs.messages() == []
        inbox.store = real_store  # type: ignore[method-assign]
        await fs.sockets[0].close()  # the platform delivers it again on the next connection
        await fs.wait_for(lambda: frame_id in fs.acked, timeout=30)
        await fs.wait_for(lambda: len(fs.messages()) == 1)
