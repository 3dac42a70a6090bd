"""Telegram long polling: against the fake, and one poller per PostgreSQL cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_telegram import FakeTelegram, message_update, telegram_toml
from harness import RunningHub, eventually, make_settings, pg_database, running_hub

from hub.channels.telegram import TelegramChannel
from hub.skills.chat import NO_MODEL


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


def channel_of(h: RunningHub) -> TelegramChannel:
    ch = h.hub.channels["telegram"]
    assert isinstance(ch, TelegramChannel)
    return ch


async def test_polling_mode_answers_and_confirms_updates(tmp_path: Path, tg: FakeTelegram) -> None:
    settings = make_settings(tmp_path, telegram_toml(tg.url, mode="polling"))
    async with running_hub(settings) as h:
        assert h.app.router.resources()  # no webhook route in polling mode:
        assert all(getattr(r, "canonical", "") != "/webhooks/telegram" for r in h.app.router.resources())
        first = tg.push_update(message_update("hello"))
        second = tg.push_update(message_update("/help", chat_id=2222222))
        await tg.wait_for(lambda: len(tg.delivered()) == 2)
        assert {c.params["chat_id"] for c in tg.delivered()} == {"1111111", "2222222"}
        assert NO_MODEL in [c.params["text"] for c in tg.delivered()]
        # The next getUpdates confirms both (offset past the last one).
        await tg.wait_for(
            lambda: any(c.params.get("offset") == str(second["update_id"] + 1) for c in tg.calls("getUpdates"))
        )
        polls = tg.calls("getUpdates")
        assert polls[0].params["allowed_updates"] == ["message"] and polls[0].params["timeout"] == "25"
        assert await h.hub.inbox.get("telegram", str(first["update_id"])) is not None
        assert channel_of(h).status() == "running"


async def test_polling_survives_telegram_being_down_and_a_webhook_conflict(tmp_path: Path, tg: FakeTelegram) -> None:
    from fake_telegram import SERVER_ERROR

    tg.script("getUpdates", SERVER_ERROR, SERVER_ERROR)
    tg.webhook = {"url": "https://elsewhere.example/webhooks/telegram"}
    settings = make_settings(tmp_path, telegram_toml(tg.url, mode="polling"))
    async with running_hub(settings) as h:
        await eventually(lambda: channel_of(h).status() == "failing")
        await tg.wait_for(lambda: len(tg.calls("getUpdates")) >= 3)  # 500, 500, 409 conflict
        tg.webhook = {}
        tg.push_update(message_update("/help"))
        await tg.wait_for(lambda: len(tg.delivered()) == 1, timeout=20)
        assert channel_of(h).status() == "running"


@pytest.mark.postgres
async def test_only_one_process_of_a_cluster_polls(tmp_path: Path, tg: FakeTelegram) -> None:
    async with pg_database() as url:
        toml = telegram_toml(tg.url, mode="polling", extra="") + f'[database]\nurl = "{url}"\n'
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a_settings = make_settings(tmp_path / "a", toml)
        b_settings = make_settings(tmp_path / "b", toml)
        async with running_hub(a_settings) as a:
            await tg.wait_for(lambda: len(tg.calls("getUpdates")) >= 1)
            async with running_hub(b_settings) as b:
                channel_of(b)._poller._lock_retry = 0.1  # type: ignore[union-attr]
                await eventually(lambda: channel_of(b).status() == "standby")
                polls_before = len(tg.calls("getUpdates"))
                tg.push_update(message_update("/help"))
                await tg.wait_for(lambda: len(tg.delivered()) == 1)
                assert channel_of(a).status() == "running"
                await a.stop()  # the leader goes: the other takes over
                await eventually(lambda: channel_of(b).status() == "running", timeout=15)
                tg.push_update(message_update("/help", chat_id=3333333))
                await tg.wait_for(lambda: len(tg.delivered()) == 2, timeout=15)
                assert len(tg.calls("getUpdates")) > polls_before
        assert len(tg.delivered()) == 2
