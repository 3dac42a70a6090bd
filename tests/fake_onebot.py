"""A fake OneBot v11 implementation (NapCat-like) on 127.0.0.1.

`FakeOneBot` plays both modes of an implementation:
- reverse WebSocket: `connect(hub_url, self_id)` dials the hub's `/onebot/v11/ws` with
  `X-Self-ID`, `X-Client-Role: Universal` and `Authorization: Bearer <token>` as NapCat does,
  pushes events with `push(self_id, event)`, and answers every action with its `echo`;
- HTTP: `post(hub_url, event)` posts an event to `/onebot/v11/http` signed with
  `X-Signature: sha1=<HMAC-SHA1>`, and its HTTP API (`url`, the hub's `api_base`) answers
  `POST /send_private_msg`, `/send_group_msg`, `/send_msg` (checking the Bearer token).

Every action, by either way, is recorded in `actions` with the account it went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from harness import FakeServer, Recorded

SEND_ACTIONS = ("send_private_msg", "send_group_msg", "send_msg")


@dataclass
class Action:
    self_id: str  # the socket's account; "http" for the HTTP API
    action: str
    params: dict[str, Any]
    echo: Any = None
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def message_id(self) -> Any:
        return (self.answer.get("data") or {}).get("message_id")


@dataclass
class Posted:
    status: int
    text: str
    seconds: float


@dataclass
class _Socket:
    self_id: str
    ws: aiohttp.ClientWebSocketResponse
    reader: asyncio.Task[None]
    frames: list[dict[str, Any]] = field(default_factory=list)


class FakeOneBot:
    def __init__(self, token: str | None = None, secret: str | None = None) -> None:
        self.token = token
        self.secret = secret
        self.actions: list[Action] = []
        self.dropped: list[dict[str, Any]] = []
        self.server = FakeServer()
        self.changed = asyncio.Event()
        self._ids = itertools.count(1000)
        self._sockets: dict[str, _Socket] = {}
        self._http: aiohttp.ClientSession | None = None
        # Answer `retcode` (with status "failed") to the next N actions, instead of ok.
        self.fail_next: list[int] = []
        # Close the socket on the next N actions instead of answering (a crash mid-send).
        self.drop_on_action = 0
        for action in SEND_ACTIONS:
            self.server.on("POST", f"/{action}", self._http_action)

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> str:
        self._http = aiohttp.ClientSession()
        return await self.server.start()

    async def stop(self) -> None:
        for self_id in list(self._sockets):
            await self.drop(self_id)
        if self._http is not None:
            await self._http.close()
        await self.server.stop()

    # --- the reverse WebSocket ---------------------------------------------------------

    async def connect(self, hub_url: str, self_id: str, *, token: str | None = None, query: str = "") -> None:
        """Dial the hub as account `self_id`; raises aiohttp.WSServerHandshakeError when refused."""
        assert self._http is not None
        headers = {"X-Self-ID": self_id, "X-Client-Role": "Universal", "User-Agent": "OneBot/11"}
        token = self.token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = hub_url.replace("http://", "ws://") + "/onebot/v11/ws" + query
        ws = await self._http.ws_connect(url, headers=headers, heartbeat=None)
        sock = _Socket(self_id, ws, asyncio.create_task(asyncio.sleep(0)))
        sock.reader = asyncio.create_task(self._read(sock))
        self._sockets[self_id] = sock
        await self.push(self_id, lifecycle(self_id))

    async def _read(self, sock: _Socket) -> None:
        async for msg in sock.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            sock.frames.append(frame)
            if self.drop_on_action:
                self.drop_on_action -= 1
                self.dropped.append(frame)
                self.changed.set()
                await sock.ws.close()
                return
            params = frame.get("params") or {}
            answer = self._answer(frame.get("action", ""))
            self.actions.append(Action(sock.self_id, frame.get("action", ""), params, frame.get("echo"), answer))
            self.changed.set()
            answer = {**answer, "echo": frame.get("echo")}
            with contextlib.suppress(ConnectionError, RuntimeError):
                await sock.ws.send_str(json.dumps(answer))

    async def push(self, self_id: str, event: dict[str, Any]) -> None:
        await self._sockets[self_id].ws.send_str(json.dumps(event, ensure_ascii=False))

    async def push_raw(self, self_id: str, text: str) -> None:
        await self._sockets[self_id].ws.send_str(text)

    async def drop(self, self_id: str) -> None:
        """Close the account's socket (as when the implementation restarts)."""
        sock = self._sockets.pop(self_id, None)
        if sock is None:
            return
        await sock.ws.close()
        sock.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sock.reader

    def connected(self, self_id: str) -> bool:
        sock = self._sockets.get(self_id)
        return sock is not None and not sock.ws.closed

    # --- HTTP ---------------------------------------------------------------------------

    async def post(
        self, hub_url: str, event: dict[str, Any] | bytes, *, secret: str | None = None, sign: bool = True
    ) -> Posted:
        assert self._http is not None
        body = event if isinstance(event, bytes) else json.dumps(event, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if isinstance(event, dict) and "self_id" in event:
            headers["X-Self-ID"] = str(event["self_id"])
        key = self.secret if secret is None else secret
        if sign and key:
            headers["X-Signature"] = "sha1=" + hmac.new(key.encode(), body, hashlib.sha1).hexdigest()
        started = time.perf_counter()
        async with self._http.post(f"{hub_url}/onebot/v11/http", data=body, headers=headers) as resp:
            return Posted(resp.status, await resp.text(), time.perf_counter() - started)

    def _http_action(self, rec: Recorded) -> web.Response:
        if self.token:
            given = rec.headers.get("Authorization", "")
            if not given:
                return web.json_response({"status": "failed", "retcode": 1401}, status=401)
            if given != f"Bearer {self.token}":
                return web.json_response({"status": "failed", "retcode": 1403}, status=403)
        action = rec.path.strip("/")
        answer = self._answer(action)
        self.actions.append(Action("http", action, rec.json if isinstance(rec.json, dict) else {}, None, answer))
        self.changed.set()
        return web.json_response(answer)

    def _answer(self, action: str) -> dict[str, Any]:
        if self.fail_next:
            return {"status": "failed", "retcode": self.fail_next.pop(0), "data": None, "message": "fake failure"}
        if action in SEND_ACTIONS:
            return {"status": "ok", "retcode": 0, "data": {"message_id": next(self._ids)}}
        return {"status": "failed", "retcode": 1404, "data": None, "message": "unsupported action"}

    # --- waiting ------------------------------------------------------------------------

    def sends(self, self_id: str | None = None) -> list[Action]:
        return [a for a in self.actions if a.action in SEND_ACTIONS and (self_id is None or a.self_id == self_id)]

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; actions: {self.actions}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=0.05)

    async def wait_sends(self, n: int, timeout: float = 10.0) -> list[Action]:
        await self.wait_for(lambda: len(self.sends()) >= n, timeout)
        return self.sends()


# --- events as the implementations post them ----------------------------------------------


def lifecycle(self_id: str) -> dict[str, Any]:
    return {
        "time": int(time.time()),
        "self_id": int(self_id),
        "post_type": "meta_event",
        "meta_event_type": "lifecycle",
        "sub_type": "connect",
    }


def private_message(
    self_id: str, user_id: int, message: Any, message_id: int, *, nickname: str = "Alice"
) -> dict[str, Any]:
    return {
        "time": int(time.time()),
        "self_id": int(self_id),
        "post_type": "message",
        "message_type": "private",
        "sub_type": "friend",
        "message_id": message_id,
        "user_id": user_id,
        "message": message,
        "raw_message": message if isinstance(message, str) else "",
        "font": 0,
        "sender": {"user_id": user_id, "nickname": nickname, "sex": "unknown", "age": 0},
    }


def group_message(
    self_id: str, group_id: int, user_id: int, message: Any, message_id: int, *, role: str = "member"
) -> dict[str, Any]:
    return {
        "time": int(time.time()),
        "self_id": int(self_id),
        "post_type": "message",
        "message_type": "group",
        "sub_type": "normal",
        "message_id": message_id,
        "group_id": group_id,
        "user_id": user_id,
        "anonymous": None,
        "message": message,
        "raw_message": message if isinstance(message, str) else "",
        "font": 0,
        "sender": {"user_id": user_id, "nickname": "Bob", "card": "", "role": role},
    }


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "data": {"text": t}}


def at(qq: str | int) -> dict[str, Any]:
    return {"type": "at", "data": {"qq": str(qq)}}


def reply(message_id: str | int) -> dict[str, Any]:
    return {"type": "reply", "data": {"id": str(message_id)}}


def plain_text(action: Action) -> str:
    """The text segments of a send action's message, joined."""
    message = action.params.get("message")
    if isinstance(message, str):
        return message
    return "".join(s["data"].get("text", "") for s in message or [] if s.get("type") == "text")
