"""`hub run` as a process: the data_dir lock, binding before anything starts, readiness."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from harness import HubProcess, free_port

from hub.serving import StartError, bind, lock_data_dir, starting_app

pytestmark = pytest.mark.slow


def run_to_exit(tmp_path: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("HUB_")}
    return subprocess.run(
        [sys.executable, "-m", "hub", "run"],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_a_second_hub_on_the_same_data_dir_exits_1_and_touches_nothing(tmp_path: Path) -> None:
    first = HubProcess(["-m", "hub", "run"], {"HUB_HTTP__PORT": "0"}, tmp_path)
    await first.start()
    try:
        done = run_to_exit(tmp_path, {"HUB_HTTP__PORT": "0"})
        assert done.returncode == 1
        assert "another hub is running on this data_dir" in done.stderr
        assert "Traceback" not in done.stderr and "event=started" not in done.stderr
        assert "listening on" not in done.stdout
        # The first one is unaffected.
        async with aiohttp.ClientSession() as http, http.get(f"{first.url}/healthz") as resp:
            assert resp.status == 200
    finally:
        first.kill()
    # kill -9 drops the lock: the next start works although hub.lock is still there.
    assert (tmp_path / "data" / "hub.lock").exists()
    again = HubProcess(["-m", "hub", "run"], {"HUB_HTTP__PORT": "0"}, tmp_path)
    await again.start()
    assert again.terminate() == 0, again.logs()


async def test_a_busy_port_is_one_line_that_says_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = run_to_exit(tmp_path, {"HUB_HTTP__PORT": str(port)})
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0]
    assert "HUB_HTTP__PORT" in lines[0] and "[http] port" in lines[0]
    # Nothing started: the database was never created.
    assert not (tmp_path / "data" / "hub.db").exists()


def test_the_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path / "d")
    with pytest.raises(StartError, match="another hub is running"):
        lock_data_dir(tmp_path / "d")
    held.close()
    lock_data_dir(tmp_path / "d").close()


def test_bind_refuses_a_busy_port_without_sharing_it() -> None:
    port = free_port()
    sock = bind("127.0.0.1", port)
    try:
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        with pytest.raises(StartError, match="already in use"):
            bind("127.0.0.1", port)
    finally:
        sock.close()


async def test_while_starting_every_path_answers_503() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(starting_app())) as client:
        for path in ("/healthz", "/", "/webhooks/telegram"):
            resp = await client.get(path)
            assert resp.status == 503
            assert (await resp.json())["status"] == "starting"
