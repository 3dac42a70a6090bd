"""Test harness: the real app on a free port, fake servers that record requests, PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.app import HUB_KEY, Hub, build_app
from hub.channels.base import Channel
from hub.config import load_settings
from hub.settings import Settings

REQUIRE_ALL = os.environ.get("HUB_TEST_REQUIRE_ALL") == "1"
PG_ADMIN_DSN = os.environ.get("HUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent


def skip_or_fail(reason: str) -> None:
    """Skip with a reason; under HUB_TEST_REQUIRE_ALL=1 (CI) a missing dependency fails."""
    if REQUIRE_ALL:
        pytest.fail(f"required by HUB_TEST_REQUIRE_ALL: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(tmp_path: Path, toml: str = "", **env: str) -> Settings:
    """Settings from a TOML snippet and HUB_ variables, with data_dir in tmp_path."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n' + toml, encoding="utf-8")
    return load_settings(cfg, env=env)


@dataclass
class RunningHub:
    app: web.Application
    url: str
    runner: web.AppRunner

    @property
    def hub(self) -> Hub:
        return self.app[HUB_KEY]

    async def stop(self) -> None:
        await self.runner.cleanup()


@asynccontextmanager
async def running_hub(
    settings: Settings, *, extra_channels: Sequence[Channel] = (), **build_kwargs: Any
) -> AsyncIterator[RunningHub]:
    """The real aiohttp app, started on a free port of 127.0.0.1."""
    app = build_app(settings, extra_channels=extra_channels, **build_kwargs)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    running = RunningHub(app, f"http://127.0.0.1:{port}", runner)
    try:
        yield running
    finally:
        await runner.cleanup()


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


Responder = Callable[[Recorded], Awaitable[web.StreamResponse] | web.StreamResponse | None]


class FakeServer:
    """An HTTP server on 127.0.0.1 that records every request and answers from a script.

    `on(method, path, responder)` sets the answer for a route (path may contain `{name}`);
    `queue(method, path, *responses)` makes the next calls get those answers in order, then
    fall back to the route's responder. Multipart bodies are parsed into `form`
    (file parts become bytes).
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._routes: dict[tuple[str, str], Responder] = {}
        self._queued: dict[tuple[str, str], list[Any]] = {}
        self._app = web.Application(client_max_size=1024**3)
        self._app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.changed = asyncio.Event()

    def on(self, method: str, path: str, responder: Responder) -> None:
        self._routes[(method.upper(), path)] = responder

    def queue(self, method: str, path: str, *responses: Any) -> None:
        self._queued.setdefault((method.upper(), path), []).extend(responses)

    def calls(self, path: str | None = None, method: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if (path is None or r.path == path) and (method is None or r.method == method.upper())
        ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met within {timeout}s; requests: {[r.path for r in self.requests]}"
                )
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=0.05)
            except TimeoutError:
                pass

    def _match(self, method: str, path: str) -> tuple[str, str] | None:
        for key in (*self._queued, *self._routes):
            m, pattern = key
            if m not in (method, "*"):
                continue
            if _path_matches(pattern, path):
                return key
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        rec = Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
        ctype = request.headers.get("Content-Type", "")
        if "json" in ctype and body:
            try:
                rec.json = json.loads(body)
            except ValueError:
                pass
        elif ctype.startswith("multipart/"):
            rec.form = await _parse_multipart(request, body)
        elif ctype.startswith("application/x-www-form-urlencoded"):
            rec.form = dict(urllib.parse.parse_qsl(body.decode()))
        self.requests.append(rec)
        self.changed.set()
        key = self._match(request.method, request.path)
        if key is None:
            return web.json_response({"error": f"fake: no route for {request.method} {request.path}"}, status=404)
        queued = self._queued.get(key)
        if queued:
            answer = queued.pop(0)
            if not queued:
                del self._queued[key]
            if callable(answer):
                answer = answer(rec)
                if asyncio.iscoroutine(answer):
                    answer = await answer
            return answer if isinstance(answer, web.StreamResponse) else web.json_response(answer)
        if key in self._routes:
            result = self._routes[key](rec)
            if asyncio.iscoroutine(result):
                result = await result
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result)
        return web.json_response({"error": "fake: nothing queued"}, status=500)

    async def start(self) -> str:
        self._runner = web.AppRunner(self._app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


def _path_matches(pattern: str, path: str) -> bool:
    if "{" not in pattern:
        return pattern == path
    pp, ps = pattern.strip("/").split("/"), path.strip("/").split("/")
    if len(pp) != len(ps):
        return False
    return all(a == b or (a.startswith("{") and a.endswith("}")) for a, b in zip(pp, ps, strict=True))


async def _parse_multipart(request: web.Request, body: bytes) -> dict[str, Any]:
    import email.parser
    import email.policy

    ctype = request.headers["Content-Type"]
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
    )
    out: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        if filename is not None:
            out[str(name)] = {"filename": filename, "data": payload, "content_type": part.get_content_type()}
        else:
            out[str(name)] = (payload or b"").decode("utf-8", "replace")
    return out


async def sse_items(resp: aiohttp.ClientResponse, *, until_done: int = 1, timeout: float = 15.0) -> list[Any]:
    """Read an SSE response's `data:` items (JSON-decoded; "[DONE]" kept) until N [DONE]s."""
    items: list[Any] = []
    done = 0
    buf = b""
    deadline = time.monotonic() + timeout
    while done < until_done:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"SSE: only {done} [DONE] within {timeout}s: {items}")
        chunk = await asyncio.wait_for(resp.content.readany(), timeout=remaining)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.decode().split("\n"):
                if line.startswith("data: "):
                    data = line[6:]
                    if data == "[DONE]":
                        items.append("[DONE]")
                        done += 1
                    else:
                        items.append(json.loads(data))
    return items


async def web_chat(
    url: str, session: str, text: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> list[Any]:
    """POST to the web chat and return its SSE items up to [DONE]."""
    async with aiohttp.ClientSession() as http:
        body = {"session": session, "text": text, **extra}
        async with http.post(f"{url}/api/web/chat", json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await sse_items(resp)


def text_of(items: Sequence[Any]) -> str:
    return "".join(i["content"] for i in items if isinstance(i, dict) and "content" in i)


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


# --- PostgreSQL ------------------------------------------------------------------------------


async def pg_available() -> bool:
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(PG_ADMIN_DSN), timeout=3)
        await conn.close()
        return True
    except Exception:
        return False


@asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test; yields its SQLAlchemy URL."""
    import asyncpg

    if not await pg_available():
        skip_or_fail(f"PostgreSQL not reachable at {PG_ADMIN_DSN}")
    name = f"hub_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# --- real hub processes ----------------------------------------------------------------------


class HubProcess:
    """`python -m hub run` (or a script) as a real process; `kill()` is SIGKILL."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log_path = cwd / f"hub-{uuid.uuid4().hex[:6]}.log"

    async def start(self, timeout: float = 20.0) -> str:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HUB_")}
        env.update(self.env)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, *self.args], cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), timeout=timeout)
        if "listening on" not in line:
            raise AssertionError(f"hub did not start: {line!r}\n{self.log_path.read_text()}")
        self.url = line.strip().split("listening on ", 1)[1].rstrip("/")
        return self.url

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
