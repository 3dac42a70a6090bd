"""Headless Chromium driven over the DevTools protocol (a WebSocket, through aiohttp).

`async with chromium(tmp_path) as page:` starts a fresh browser with its own profile and yields
the Page of its first tab: `goto`, `evaluate`, `wait_for`, `type`, `press_enter`, `click`,
`screenshot`, `viewport`, and the JavaScript errors the page raised (`errors`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from harness import skip_or_fail

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-port=0",
)


def find_chromium() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("Chromium is not installed (Debian packages: chromium, chromium-driver)")
    raise AssertionError("unreachable")


class CdpError(AssertionError):
    pass


class Page:
    """One tab, spoken to over its DevTools WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self.errors: list[str] = []
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())
        self.on("Runtime.exceptionThrown", self._exception)
        self.on("Runtime.consoleAPICalled", self._console)

    def on(self, event: str, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.setdefault(event, []).append(listener)

    async def call(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_json({"id": msg_id, "method": method, "params": params})
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(msg_id, None)

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.get(data["id"])
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(CdpError(f"{data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
            for listener in self._listeners.get(data.get("method", ""), []):
                listener(data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the connection"))

    def _exception(self, params: dict[str, Any]) -> None:
        details = params.get("exceptionDetails", {})
        self.errors.append(str(details.get("exception", {}).get("description") or details.get("text")))

    def _console(self, params: dict[str, Any]) -> None:
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        self.console.append(f"{params.get('type')}: {args}")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()

    # --- what a test does with a page ----------------------------------------------------

    async def goto(self, url: str, timeout: float = 15.0) -> None:
        loaded = asyncio.Event()
        self.on("Page.loadEventFired", lambda _params: loaded.set())
        result = await self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"cannot open {url}: {result['errorText']}")
        await asyncio.wait_for(loaded.wait(), timeout)
        self._listeners["Page.loadEventFired"].clear()

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} raised {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll a JavaScript expression until it is truthy (in JavaScript); return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(f"(() => {{ const v = ({expression}); return v ? [v] : null; }})()")
            if value:
                return value[0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not true within {timeout}s: {expression}\nerrors: {self.errors}\nconsole: {self.console}"
                )
            await asyncio.sleep(0.05)

    async def type(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.call("Input.insertText", text=text)

    async def press_enter(self) -> None:
        key: dict[str, Any] = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
        await self.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **key)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def viewport(self, width: int, height: int, *, mobile: bool, scale: float = 1.0) -> None:
        await self.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=scale, mobile=mobile
        )

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


@asynccontextmanager
async def chromium(tmp_path: Path, timeout: float = 30.0) -> AsyncIterator[Page]:
    """A fresh headless Chromium; yields the Page of its first tab, enabled for events."""
    binary = find_chromium()
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with open(tmp_path / "chromium.log", "wb") as log:  # the browser keeps its own copy of the file
        proc = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=log,
            stderr=log,
            start_new_session=True,  # its helper processes share the group, stopped together below
        )
    try:
        port = await _devtools_port(profile, proc, timeout, tmp_path / "chromium.log")
        async with aiohttp.ClientSession() as http:
            ws_url = await _first_page(http, port, timeout)
            page = Page(await http.ws_connect(ws_url, max_msg_size=0))
            try:
                for domain in ("Page.enable", "Runtime.enable"):
                    await page.call(domain)
                yield page
            finally:
                await page.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def _devtools_port(profile: Path, proc: asyncio.subprocess.Process, timeout: float, log: Path) -> int:
    """Chromium writes the port it chose into the profile once DevTools listens."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while True:
        if marker.exists():
            first = marker.read_text().split("\n", 1)[0].strip()
            if first.isdigit():
                return int(first)
        if proc.returncode is not None or time.monotonic() > deadline:
            raise AssertionError(f"Chromium did not open DevTools:\n{log.read_text(errors='replace')[-3000:]}")
        await asyncio.sleep(0.05)


async def _first_page(http: aiohttp.ClientSession, port: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        if time.monotonic() > deadline:
            raise AssertionError(f"Chromium has no page to drive: {targets}")
        await asyncio.sleep(0.05)
