"""`hub run --workers N`: one socket bound by the parent, N workers on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from harness import HubProcess, eventually, pg_database, text_of, web_chat

pytestmark = pytest.mark.slow


def started_pids(logs: str) -> set[str]:
    return set(re.findall(r"event=started holder=[^:\s]+:(\d+):", logs))


def test_more_than_one_worker_on_sqlite_is_a_mistake_that_says_why(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("HUB_")}
    done = subprocess.run(
        [sys.executable, "-m", "hub", "run", "--workers", "2"],
        cwd=tmp_path,
        env={**clean, "HUB_HTTP__PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("workers: ") and "PostgreSQL" in done.stderr
    assert not (tmp_path / "data" / "hub.db").exists()


@pytest.mark.postgres
async def test_two_workers_share_one_port_answer_once_and_stop_together(tmp_path: Path) -> None:
    async with pg_database() as url:
        cfg = tmp_path / "hub.toml"
        cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[http]\nport = 0\n[database]\nurl = "{url}"\n')
        proc = HubProcess(["-m", "hub", "run", "--workers", "2", "--config", str(cfg)], {}, tmp_path)
        await proc.start(timeout=120)
        try:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", proc.url)
            await eventually(lambda: len(started_pids(proc.logs())) == 2, timeout=30)
            answers = await asyncio.gather(*(web_chat(proc.url, f"s{i}", "/help") for i in range(20)))
            assert all("/help" in text_of(a) for a in answers)
            async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/healthz") as resp:
                assert resp.status == 200

            # A worker that dies is started again; the port keeps answering meanwhile.
            victim = sorted(started_pids(proc.logs()))[0]
            os.kill(int(victim), signal.SIGKILL)
            await eventually(lambda: "event=worker_died" in proc.logs(), timeout=30)
            await eventually(lambda: len(started_pids(proc.logs())) == 3, timeout=60)
            assert "/help" in text_of(await web_chat(proc.url, "after", "/help"))
            pids = started_pids(proc.logs()) - {victim}
        finally:
            code = proc.terminate(timeout=30)
        assert code == 0, proc.logs()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(int(pid), 0)
