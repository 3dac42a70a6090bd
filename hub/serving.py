"""Running the hub as a process: the data_dir lock, binding first, and readiness.

Order matters: on SQLite the `flock` on `<data_dir>/hub.lock` comes first (a second hub on the
same files must not take back leases or send), then the port is bound (a busy port fails
before anything starts), then a small answering server says 503 while the parts start, and
only then does the real app take the socket and `Hub listening on` get printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from sqlalchemy.engine import make_url

from hub.settings import Settings

log = logging.getLogger("hub.serving")


class StartError(Exception):
    """A start-up failure with a one-line explanation for the operator (no traceback)."""


def lock_data_dir(data_dir: Path, path: Path | None = None) -> IO[str]:
    """Hold an OS lock on `<data_dir>/hub.lock` (or `path`) for the life of the process.

    The kernel drops a `flock` when its holder dies, kill -9 included, so a stale lock file
    never blocks a restart: the file's existence means nothing, only the lock does.
    """
    path = path or data_dir / "hub.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # held open for the life of the process
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StartError(
                f"another hub is running on this data_dir ({data_dir.resolve()}): stop it first, "
                "or give this one another data_dir"
            ) from None
        raise StartError(f"cannot lock {path}: {exc.strerror}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any part starts. No SO_REUSEPORT: a second hub on a
    busy port must fail, not share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartError(
                f"cannot listen on {where}: the address is already in use (another program, or another hub); "
                "choose another port with [http] port in the config or HUB_HTTP__PORT"
            ) from None
        raise StartError(f"cannot listen on {where}: {exc.strerror}; check [http] host and [http] port") from None
    sock.setblocking(False)
    return sock


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run the process's event loop: uvloop's where it installs (its sockets and callbacks cost a
    fraction of the default loop's), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _starting(request: web.Request) -> web.Response:
    return web.json_response({"status": "starting"}, status=503, headers={"Retry-After": "1"})


def starting_app() -> web.Application:
    """What the bound port answers while the parts start: 503 everywhere, /healthz included."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _starting)
    return app


def listening_line(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"Hub listening on http://{shown}:{port}/"


async def serve(
    settings: Settings, *, inherited: socket.socket | None = None, started: Callable[[], None] | None = None
) -> int:
    """`hub run`: lock, bind, answer 503 while starting, run until SIGTERM/SIGINT.

    A worker of `hub run --workers N` gets the parent's listening socket as `inherited`: the
    parent has bound it and answers while the workers start, and takes no data_dir lock
    (several workers need PostgreSQL). `started` is called once the hub is ready.
    """
    from hub.app import build_app

    locks: list[IO[str]] = []
    try:
        if inherited is None and settings.database_url.startswith("sqlite"):
            locks = sqlite_locks(settings)
        sock = inherited if inherited is not None else bind(settings.http.host, settings.http.port)
    except StartError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    placeholder: web.AppRunner | None = None
    if inherited is None:
        placeholder = await start_placeholder(sock)
    runner = web.AppRunner(build_app(settings), handle_signals=False, shutdown_timeout=3.0, access_log=None)
    try:
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except Exception as exc:
            log.exception("event=start_failed")
            print(f"hub: could not start: {exc}", file=sys.stderr)
            with contextlib.suppress(Exception):
                await runner.cleanup()
            return 1
        finally:
            if placeholder is not None:
                await placeholder.cleanup()
        # What start-up built lives as long as the process: kept out of the collector's full
        # passes, which otherwise walk it all (the SDKs' types, the app), ~100 ms a pass.
        gc.freeze()
        print(listening_line(settings.http.host, sock), flush=True)
        if started is not None:
            started()
        await stop.wait()
        log.info("event=stopping")
        try:
            await asyncio.wait_for(runner.cleanup(), timeout=9.0)
        except TimeoutError:
            log.error("event=stop_timeout")
            return 1
        return 0
    finally:
        for held in locks:
            held.close()


def sqlite_locks(settings: Settings) -> list[IO[str]]:
    """The data_dir's lock and, for a database file outside it, one beside that file too: two
    hubs with their own data_dirs on one SQLite file would both take back every lease."""
    locks = [lock_data_dir(settings.data_dir)]
    database = make_url(settings.database_url).database
    if database and database != ":memory:":
        db_file = Path(database).resolve()
        if db_file.parent != settings.data_dir.resolve():
            try:
                locks.append(lock_data_dir(db_file.parent, db_file.with_name(db_file.name + ".lock")))
            except StartError:
                locks[0].close()
                raise StartError(f"another hub is running on the database {db_file}") from None
    return locks


async def start_placeholder(sock: socket.socket) -> web.AppRunner:
    """Answer 503 on the bound socket until the real app takes it over.

    It serves a duplicate of the socket, so closing it leaves the real one open.
    """
    placeholder = web.AppRunner(starting_app(), handle_signals=False, shutdown_timeout=0.5, access_log=None)
    await placeholder.setup()
    await web.SockSite(placeholder, sock.dup()).start()
    return placeholder
