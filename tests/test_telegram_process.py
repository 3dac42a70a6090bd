"""Telegram with real processes: SIGKILL after the acks, the CLI, and imports when disabled."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_telegram import SECRET, FakeTelegram, error, message_update, post_update, telegram_toml
from harness import ROOT, HubProcess

from hub.cli import main
from hub.skills.chat import NO_MODEL


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.stop()


async def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`hub ...` in this process (aiogram is imported once for all tests); its own event loop in a thread."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write_config(tmp_path: Path, toml: str) -> Path:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n{toml}', encoding="utf-8")
    return cfg


@pytest.mark.slow
async def test_killed_after_the_acks_each_chat_gets_exactly_one_answer_after_restart(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    cfg = write_config(tmp_path, "[http]\nport = 0\n" + telegram_toml(tg.url))
    tg.hold("sendMessage")  # the first process never hears back from Telegram
    first = HubProcess(["-m", "hub", "run", "--config", str(cfg)], {}, tmp_path)
    await first.start(timeout=120)
    try:
        updates = [message_update("hello" if i % 2 else "/help", chat_id=5000 + i) for i in range(20)]
        statuses = await asyncio.gather(*(post_update(first.url, u) for u in updates))
        assert statuses == [200] * 20
    finally:
        first.kill()
    assert tg.delivered() == []
    tg.release()  # what was held went nowhere: the connection died with the process
    second = HubProcess(["-m", "hub", "run", "--config", str(cfg)], {}, tmp_path)
    await second.start(timeout=120)
    try:
        await tg.wait_for(lambda: len(tg.delivered()) >= 20, timeout=90)
        # Telegram retrying an update after the restart changes nothing.
        assert await post_update(second.url, updates[0]) == 200
        await asyncio.sleep(1.0)
        per_chat = Counter(c.params["chat_id"] for c in tg.delivered())
        assert per_chat == Counter({str(5000 + i): 1 for i in range(20)})
        answers = {c.params["chat_id"]: c.params["text"] for c in tg.delivered()}
        assert answers["5001"] == NO_MODEL and "/help" in answers["5000"]
    finally:
        assert second.terminate() == 0, second.logs()


async def test_cli_sets_and_deletes_the_webhook(
    tmp_path: Path, tg: FakeTelegram, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, telegram_toml(tg.url))
    code, out, err = await run_cli(
        capsys, "telegram", "set-webhook", "--config", str(cfg), "--url", "https://bot.example.org/"
    )
    assert (code, out.strip()) == (0, "webhook set: https://bot.example.org/webhooks/telegram"), err
    assert tg.webhook == {
        "url": "https://bot.example.org/webhooks/telegram",
        "secret_token": SECRET,
        "allowed_updates": ["message"],
    }
    code, out, err = await run_cli(capsys, "telegram", "delete-webhook", "--config", str(cfg))
    assert (code, out.strip()) == (0, "webhook deleted"), err
    assert tg.webhook == {} and len(tg.calls("deleteWebhook")) == 1

    # No address given and no [http] public_url: a configuration mistake, nothing called.
    code, _, err = await run_cli(capsys, "telegram", "set-webhook", "--config", str(cfg))
    assert code == 2 and err.startswith("http.public_url:")
    # Telegram refusing the address is a failure at run time.
    public = '[http]\npublic_url = "https://hub.example.org"\n[web]\ntoken = "t"\n'
    with_public = write_config(tmp_path, public + telegram_toml(tg.url))
    tg.script("setWebhook", error(400, "Bad Request: bad webhook: Failed to resolve host"))
    code, _, err = await run_cli(capsys, "telegram", "set-webhook", "--config", str(with_public))
    assert code == 1 and "Failed to resolve host" in err
    assert [c.params["url"] for c in tg.calls("setWebhook")] == [
        "https://bot.example.org/webhooks/telegram",
        "https://hub.example.org/webhooks/telegram",
    ]


@pytest.mark.slow
async def test_aiogram_is_not_imported_when_telegram_is_disabled(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[telegram]\nenabled = false\ntoken = "123:abc"\n')
    code = f"""
import asyncio, sys
from aiohttp import web
from hub.app import build_app
from hub.config import load_settings

async def main() -> None:
    app = build_app(load_settings({str(cfg)!r}, env={{}}))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    await runner.cleanup()

asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] == "aiogram"))
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"
