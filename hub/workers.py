"""`hub run --workers N`: N worker processes of one hub sharing one listening socket.

The parent binds once (resolving `port = 0`), answers 503 while the workers start, and hands
the socket to each worker as an inherited file descriptor: the kernel spreads connections
over the workers accepting on it, with no SO_REUSEPORT. Everything that must run once per
cluster already runs under PostgreSQL advisory locks, and leases keep the workers apart, so
the workers are ordinary hub processes. A worker that dies is started again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from hub.backoff import backoff_delay
from hub.serving import StartError, bind, listening_line, start_placeholder
from hub.settings import Settings

log = logging.getLogger("hub.workers")

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 12.0


def sqlite_refusal(settings: Settings, workers: int) -> str | None:
    if workers > 1 and settings.database_url.startswith("sqlite"):
        return (
            f"workers: {workers} workers need PostgreSQL ([database] url = \"postgresql+asyncpg://...\"): "
            "a SQLite database belongs to one process"
        )
    return None


class Worker:
    def __init__(self, index: int, argv: Sequence[str], fd: int) -> None:
        self.index = index
        self._argv = list(argv)
        self._fd = fd
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started: asyncio.Task[bool] | None = None

    def spawn(self) -> None:
        args = [sys.executable, "-m", "hub", "run", *self._argv, "--listen-fd", str(self._fd)]
        self.proc = subprocess.Popen(args, pass_fds=(self._fd,), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)

    async def ready(self) -> bool:
        """Wait for the worker's own `Hub listening on` line (False when it died first)."""
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        return b"listening on" in line

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


async def supervise(settings: Settings, workers: int, argv: Sequence[str]) -> int:
    """Bind, start `workers` workers, keep them running until SIGTERM/SIGINT."""
    try:
        sock = bind(settings.http.host, settings.http.port)
    except StartError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    os.set_inheritable(sock.fileno(), True)
    placeholder = await start_placeholder(sock)
    pool = [Worker(i, argv, sock.fileno()) for i in range(workers)]
    try:
        for w in pool:
            w.spawn()
        try:
            ok = await asyncio.wait_for(asyncio.gather(*(w.ready() for w in pool)), timeout=START_TIMEOUT_S)
        except TimeoutError:
            ok = [False]
        if not all(ok):
            print("hub: a worker could not start (its log is above)", file=sys.stderr)
            return 1
    finally:
        await placeholder.cleanup()
    print(listening_line(settings.http.host, sock), flush=True)
    log.info("event=workers_started count=%d pids=%s", workers, ",".join(str(w.proc.pid) for w in pool if w.proc))
    try:
        await _keep_alive(pool, stop)
    finally:
        codes = await _stop_all(pool)
        sock.close()
    return 0 if all(c == 0 for c in codes) else 1


async def _keep_alive(pool: list[Worker], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        for w in pool:
            if stop.is_set() or w.proc is None or w.proc.poll() is None:
                continue
            w.restarts += 1
            delay = backoff_delay(w.restarts, base=1.0, cap=30.0)
            log.error("event=worker_died index=%d code=%s restart_in_s=%.1f", w.index, w.proc.returncode, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if not stop.is_set():
                w.spawn()
                w.started = asyncio.create_task(w.ready())


async def _stop_all(pool: list[Worker]) -> list[int]:
    for w in pool:
        w.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    codes: list[int] = []
    for w in pool:
        if w.proc is None:
            continue
        try:
            codes.append(await asyncio.to_thread(w.proc.wait, max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            w.signal(signal.SIGKILL)
            codes.append(await asyncio.to_thread(w.proc.wait))
    return codes
