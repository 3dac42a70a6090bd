"""Feishu with real processes: killed and restarted on the long connection; imports when disabled."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_feishu import FakeFeishu, feishu_toml, message_event
from harness import ROOT, HubProcess

from hub.i18n import texts
from hub.skills.chat import NO_MODEL


@pytest.fixture
async def fs() -> AsyncIterator[FakeFeishu]:
    fake = FakeFeishu()
    await fake.start()
    yield fake
    await fake.stop()


def write_config(tmp_path: Path, toml: str) -> Path:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n{toml}', encoding="utf-8")
    return cfg


@pytest.mark.slow
async def test_killed_and_restarted_on_the_long_connection_nothing_is_lost(tmp_path: Path, fs: FakeFeishu) -> None:
    cfg = write_config(tmp_path, "[http]\nport = 0\n" + feishu_toml(fs.url, mode="websocket"))
    users = [f"ou_user{i:04d}" for i in range(12)]
    fs.hold("messages")  # the first process never hears back from Feishu
    first = HubProcess(["-m", "hub", "run", "--config", str(cfg)], {}, tmp_path)
    await first.start(timeout=120)
    try:
        await fs.wait_for(lambda: len(fs.sockets) == 1, timeout=60)
        for user in users[:10]:
            await fs.push(message_event("hello", sender=user))
        await fs.wait_for(lambda: len(fs.acked) == 10, timeout=60)  # every one stored, then acked
    finally:
        first.kill()
    await fs.wait_for(lambda: not fs.sockets, timeout=30)
    for user in users[10:]:
        await fs.push(message_event("hello", sender=user))  # while no hub is connected
    assert fs.messages() == []
    fs.release()
    second = HubProcess(["-m", "hub", "run", "--config", str(cfg)], {}, tmp_path)
    await second.start(timeout=120)
    try:
        await fs.wait_for(lambda: len(fs.messages()) >= 12, timeout=90)
        await asyncio.sleep(1.0)
        per_user = Counter(m.json["receive_id"] for m in fs.messages())
        assert per_user == Counter({u: 1 for u in users})
        assert {m.content["text"] for m in fs.messages()} == {texts("zh")(NO_MODEL)}
        assert not fs.pending
    finally:
        assert second.terminate() == 0, second.logs()


@pytest.mark.slow
async def test_lark_oapi_is_not_imported_when_feishu_is_disabled(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[feishu]\nenabled = false\napp_id = "cli_a"\napp_secret = "s"\n')
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
print(sorted(m for m in sys.modules if m.split(".")[0] == "lark_oapi" or m.startswith("hub.channels.feishu")))
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"
