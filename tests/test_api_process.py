"""The delivery API with real processes and the CLI: kill -9 after a 202, two hubs on
PostgreSQL sharing one Idempotency-Key, and `hub send --wait` with its exit codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_telegram import BLOCKED, FakeTelegram, telegram_toml
from harness import HubProcess, make_settings, pg_database, running_hub
from test_api import api_toml, post

from hub.cli import main


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


def write_config(tmp_path: Path, toml: str) -> Path:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n{toml}', encoding="utf-8")
    return cfg


@pytest.mark.slow
async def test_killed_right_after_a_202_the_message_is_sent_once_after_restart(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    cfg = write_config(tmp_path, "[http]\nport = 0\n" + telegram_toml(tg.url) + api_toml())
    tg.hold("sendMessage")  # the first process never hears back
    first = HubProcess(["-m", "hub", "run", "--config", str(cfg)], {}, tmp_path)
    await first.start(timeout=120)
    try:
        status, _, _ = await post(first.url, {"to": "telegram:private:42", "text": "kill me"})
        assert status == 202
    finally:
        first.kill()
    assert tg.delivered() == []
    tg.release()
    second = HubProcess(["-m", "hub", "run", "--config", str(cfg)], {}, tmp_path)
    await second.start(timeout=120)
    try:
        await tg.wait_for(lambda: len(tg.delivered()) >= 1, timeout=60)
        await asyncio.sleep(0.5)
        assert [c.params["text"] for c in tg.delivered()] == ["kill me"]
    finally:
        assert second.terminate() == 0, second.logs()


@pytest.mark.postgres
async def test_two_hubs_on_postgresql_share_one_idempotency_key(tmp_path: Path, tg: FakeTelegram) -> None:
    async with pg_database() as url:
        toml = f'[database]\nurl = "{url}"\n' + telegram_toml(tg.url) + api_toml()
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a_settings, b_settings = make_settings(tmp_path / "a", toml), make_settings(tmp_path / "b", toml)
        async with running_hub(a_settings) as a, running_hub(b_settings) as b:
            msg = {"to": "telegram:group:-100777", "text": "deploy done"}
            key = {"Idempotency-Key": "deploy-991"}
            answers = await asyncio.gather(*(post(h.url, msg, headers=key) for h in (a, b, a, b, a, b)))
            assert [s for s, _, _ in answers] == [202] * 6
            assert len({body["id"] for _, body, _ in answers}) == 1
            await tg.wait_for(lambda: len(tg.delivered()) >= 1)
            await asyncio.sleep(1.0)
            assert [c.params["text"] for c in tg.delivered()] == ["deploy done"]


async def hub_send(*args: str) -> tuple[int, str, str]:
    """`hub send ...` through the CLI's own entry point, in a thread with its own loop."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["send", *args])

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def test_hub_send_wait_exit_codes(tmp_path: Path, tg: FakeTelegram) -> None:
    cfg = write_config(tmp_path, telegram_toml(tg.url) + api_toml())
    async with running_hub(make_settings(tmp_path, telegram_toml(tg.url) + api_toml())) as h:
        base = ["--config", str(cfg), "--url", h.url]
        code, out, err = await hub_send(*base, "--to", "telegram:private:42", "--text", "hi", "--wait")
        assert code == 0, err
        item_id, outcome = out.split()
        assert item_id.isdigit() and outcome == "sent"
        assert [c.params["text"] for c in tg.delivered()] == ["hi"]

        tg.script("sendMessage", BLOCKED)
        code, out, err = await hub_send(*base, "--to", "telegram:private:43", "--text", "x", "--wait")
        assert code == 1 and "failed" in out and "blocked" in out, (out, err)

        tg.hold("sendMessage")
        code, out, _ = await hub_send(*base, "--to", "telegram:private:44", "--text", "y", "--wait", "--timeout", "1")
        assert code == 4 and out.split()[1] == "queued"
        tg.release()

        photo = tmp_path / "cat.png"
        photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\1" * 32)
        code, out, err = await hub_send(*base, "--to", "telegram:private:45", "--media", str(photo), "--wait")
        assert code == 0, err
        assert tg.calls("sendPhoto")[-1].file("photo").data == photo.read_bytes()  # type: ignore[union-attr]

        # Refusals and mistakes: exit 2 with one line, nothing sent.
        code, _, err = await hub_send(*base, "--to", "nowhere", "--text", "x")
        assert code == 2 and "refused: 400" in err and "(to)" in err
        code, _, err = await hub_send(*base, "--to", "telegram:private:1")
        assert code == 2 and "--text" in err
        no_token = write_config(tmp_path, telegram_toml(tg.url))
        args = ["--config", str(no_token), "--url", h.url, "--to", "telegram:private:1", "--text", "x"]
        code, _, err = await hub_send(*args)
        assert code == 2 and "api.token" in err
