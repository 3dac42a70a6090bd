"""A fake Feishu open platform on 127.0.0.1, speaking the real protocol, and sample events.

HTTP (answers `{"code": 0, "msg": "success", "data": ...}` like the platform):
`POST /open-apis/auth/v3/tenant_access_token/internal`, `GET /open-apis/bot/v3/info`,
`POST /open-apis/im/v1/messages?receive_id_type=`, `POST /open-apis/im/v1/messages/{id}/reply`
(both deduplicated on `uuid`, as Feishu does), `POST /open-apis/im/v1/images`,
`POST /open-apis/im/v1/files`, `GET /open-apis/im/v1/messages/{id}/resources/{key}`,
`GET /open-apis/im/v1/chats/{chat_id}` (owner and managers, from `chats`),
`POST /open-apis/cardkit/v1/cards`, `PUT .../cards/{id}/elements/{element}/content` (the
sequence must grow), `PATCH .../cards/{id}/settings`. Every call but the token needs a token
the fake issued and has not revoked (else 99991663). On demand: a slow token endpoint,
99991400 with `x-ogw-ratelimit-reset`, revoked tokens, no CardKit or chat-information
permission, held sends.

Long connection: `POST /callback/ws/endpoint` gives `ws://.../ws?device_id=&service_id=`, where
the fake pushes event frames (lark's protobuf `Frame`, type `event`) and records the acks; an
event not acked with code 200 is pushed again on the next connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

APP_ID = "cli_a1b2c3d4e5f6a7b8"
APP_SECRET = "fake-app-secret"
VERIFICATION_TOKEN = "v-token-123"
ENCRYPT_KEY = "fake encrypt key"
BOT_OPEN_ID = "ou_bot0000000000000000000000000000"
BOT_NAME = "HubBot"
USER_OPEN_ID = "ou_7d8a6e6df7621556ce0d21922b676706ccs"
OWNER_OPEN_ID = "ou_0wner00000000000000000000000000"
GROUP_CHAT_ID = "oc_5ad11d72b830411d72b836c20"
NO_PERMISSION = 99991672


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)
    answered: bool = False  # answered 200 (not held, refused or rate-limited)
    duplicate: bool = False  # a send whose uuid the platform had seen: not shown again

    @property
    def content(self) -> dict[str, Any]:
        """A message's `content`, decoded (it is a JSON string inside the JSON body)."""
        return dict(json.loads(self.json["content"]))


def ok(data: Any = None) -> web.Response:
    return web.json_response({"code": 0, "msg": "success", "data": data if data is not None else {}})


def fail(code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


class FakeFeishu:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.changed = asyncio.Event()
        self.token_delay_s = 0.0
        self.token_expire_s = 7200
        self.deny_cards = False
        # chat_id → (owner open_id, manager open_ids) for chat information; else OWNER_OPEN_ID alone.
        self.chats: dict[str, tuple[str, list[str]]] = {}
        self.deny_chat_info = False
        # Makes the answer to a card creation (a 5xx, a page that is not JSON, ...).
        self.card_failure: Any = None
        self.held: set[str] = set()
        self._release = asyncio.Event()
        self._limited: dict[str, list[float]] = {}
        self._tokens: set[str] = set()
        self._ids = itertools.count(1)
        self._uuids: dict[str, str] = {}
        self.resources: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        # Long connection.
        self.sockets: list[web.WebSocketResponse] = []
        self.connects = 0
        self.pending: dict[str, bytes] = {}  # frame message_id -> event payload, until acked 200
        self.acked: list[str] = []
        self.refused: list[str] = []  # answered with an error: still pending
        self.ws_refuse = False
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- scripting ----------------------------------------------------------------------

    def rate_limit(self, path_end: str, n: int = 1, reset_s: float = 1.0) -> None:
        """The next n calls whose path ends with `path_end` get 99991400, reset after `reset_s`."""
        self._limited.setdefault(path_end, []).extend([reset_s] * n)

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused from now on (99991663)."""
        self._tokens.clear()

    def hold(self, *path_ends: str) -> None:
        self.held.update(path_ends)
        self._release.clear()

    def release(self) -> None:
        self.held.clear()
        self._release.set()

    def of(self, path_end: str, method: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.path.endswith(path_end) and (method is None or c.method == method)]

    def messages(self) -> list[Call]:
        """Messages sent and replies, answered with success, in order."""
        return [
            c
            for c in self.calls
            if c.path.startswith("/open-apis/im/v1/messages") and c.method == "POST" and c.answered and not c.duplicate
        ]

    async def wait_for(self, predicate: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; calls: {[c.path for c in self.calls]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=0.05)
            except TimeoutError:
                pass

    # --- the server ---------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/open-apis/auth/v3/tenant_access_token/internal", self._token)
        r.add_get("/open-apis/bot/v3/info", self._authed(self._bot_info))
        r.add_post("/open-apis/im/v1/messages", self._authed(self._send))
        r.add_post("/open-apis/im/v1/messages/{message_id}/reply", self._authed(self._send))
        r.add_post("/open-apis/im/v1/images", self._authed(self._image))
        r.add_post("/open-apis/im/v1/files", self._authed(self._file))
        r.add_get("/open-apis/im/v1/messages/{message_id}/resources/{key}", self._authed(self._resource))
        r.add_get("/open-apis/im/v1/chats/{chat_id}", self._authed(self._chat_info))
        r.add_post("/open-apis/cardkit/v1/cards", self._authed(self._card_create))
        r.add_put(
            "/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content", self._authed(self._card_content)
        )
        r.add_patch("/open-apis/cardkit/v1/cards/{card_id}/settings", self._authed(self._card_settings))
        r.add_post("/callback/ws/endpoint", self._endpoint)
        r.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self.release()
        for ws in list(self.sockets):
            await ws.close()
        if self._runner:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Call:
        call = Call(request.method, request.path, dict(request.query), dict(request.headers))
        if request.content_type == "application/json":
            call.json = await request.json()
        elif request.content_type.startswith("multipart/"):
            async for part in await request.multipart():
                assert isinstance(part, aiohttp.BodyPartReader)
                data = await part.read()
                call.form[str(part.name)] = (
                    {"filename": part.filename, "data": bytes(data)} if part.filename else data.decode()
                )
        self.calls.append(call)
        self.changed.set()
        return call

    async def _token(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        if call.json != {"app_id": APP_ID, "app_secret": APP_SECRET}:
            return fail(10014, "app secret invalid")
        token = f"t-{uuidlib.uuid4().hex}"
        self._tokens.add(token)
        return web.json_response({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.token_expire_s})

    def _authed(self, handler: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            call = await self._record(request)
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
                return fail(
                    99991663, "Invalid access token for authorization. Please make a request with token attached."
                )
            for end, resets in self._limited.items():
                if request.path.endswith(end) and resets:
                    reset = resets.pop(0)
                    headers = {"x-ogw-ratelimit-limit": "5", "x-ogw-ratelimit-reset": str(int(reset))}
                    return fail(99991400, "request trigger frequency limit", 400, headers)
            if any(
                request.path.endswith(h) or (h == "messages" and "/im/v1/messages" in request.path) for h in self.held
            ):
                await self._release.wait()
                raise web.HTTPServiceUnavailable()
            answer: web.StreamResponse = await handler(request, call)
            call.answered = answer.status == 200
            self.changed.set()
            return answer

        return wrapped

    async def _bot_info(self, request: web.Request, call: Call) -> web.Response:
        bot = {
            "activate_status": 2,
            "app_name": BOT_NAME,
            "avatar_url": "",
            "ip_white_list": [],
            "open_id": BOT_OPEN_ID,
        }
        return web.json_response({"code": 0, "msg": "ok", "bot": bot})

    async def _send(self, request: web.Request, call: Call) -> web.Response:
        body = call.json or {}
        if not isinstance(body.get("content"), str) or not isinstance(body.get("msg_type"), str):
            return fail(230001, "param is invalid: content and msg_type are required")
        if "message_id" not in request.match_info and request.query.get("receive_id_type") not in (
            "open_id",
            "chat_id",
        ):
            return fail(230001, "receive_id_type is invalid")
        key = body.get("uuid")
        if key and key in self._uuids:
            call.duplicate = True
            return ok({"message_id": self._uuids[key]})
        message_id = f"om_{next(self._ids):06d}"
        if key:
            self._uuids[key] = message_id
        return ok({"message_id": message_id, "msg_type": body["msg_type"], "chat_id": GROUP_CHAT_ID})

    async def _image(self, request: web.Request, call: Call) -> web.Response:
        if call.form.get("image_type") != "message" or not isinstance(call.form.get("image"), dict):
            return fail(234001, "Invalid request param.")
        key = f"img_v3_{next(self._ids):04d}"
        self.uploads[key] = call.form
        return ok({"image_key": key})

    async def _file(self, request: web.Request, call: Call) -> web.Response:
        kinds = {"opus", "mp4", "pdf", "doc", "xls", "ppt", "stream"}
        if call.form.get("file_type") not in kinds or not isinstance(call.form.get("file"), dict):
            return fail(234001, "Invalid request param.")
        key = f"file_v3_{next(self._ids):04d}"
        self.uploads[key] = call.form
        return ok({"file_key": key})

    async def _resource(self, request: web.Request, call: Call) -> web.Response:
        data = self.resources.get((request.match_info["message_id"], request.match_info["key"]))
        if data is None:
            return fail(234003, "File not in msg.")
        return web.Response(body=data, content_type="application/octet-stream")

    async def _chat_info(self, request: web.Request, call: Call) -> web.Response:
        if self.deny_chat_info:
            return fail(NO_PERMISSION, "Access denied. One of the following scopes is required: [im:chat:readonly]")
        if request.query.get("user_id_type", "open_id") != "open_id":
            return fail(99992402, "field validation failed: this fake names users by open_id only")
        owner, managers = self.chats.get(request.match_info["chat_id"], (OWNER_OPEN_ID, []))
        return ok(
            {
                "name": "Test group",
                "chat_mode": "group",
                "chat_type": "private",
                "owner_id_type": "open_id",
                "owner_id": owner,
                "user_manager_id_list": managers,
                "bot_manager_id_list": [],
                "user_count": "3",
                "bot_count": "1",
            }
        )

    async def _card_create(self, request: web.Request, call: Call) -> web.Response:
        if self.card_failure is not None:
            return self.card_failure()
        if self.deny_cards:
            return fail(NO_PERMISSION, "Access denied. One of the following scopes is required: [cardkit:card:write]")
        body = call.json or {}
        if body.get("type") != "card_json":
            return fail(300301, "invalid card type")
        card = json.loads(body["data"])
        card_id = f"7355372766134{next(self._ids):06d}"
        self.cards[card_id] = {
            "card": card,
            "sequences": [],
            "contents": [],
            "streaming": card["config"]["streaming_mode"],
        }
        return ok({"card_id": card_id})

    async def _card_content(self, request: web.Request, call: Call) -> web.Response:
        card = self.cards.get(request.match_info["card_id"])
        if card is None:
            return fail(300300, "card not found")
        seq = (call.json or {}).get("sequence")
        if not isinstance(seq, int) or (card["sequences"] and seq <= card["sequences"][-1]):
            return fail(300317, "sequence number compare failed")
        card["sequences"].append(seq)
        card["contents"].append(call.json["content"])
        return ok()

    async def _card_settings(self, request: web.Request, call: Call) -> web.Response:
        card = self.cards.get(request.match_info["card_id"])
        if card is None:
            return fail(300300, "card not found")
        seq = (call.json or {}).get("sequence")
        if not isinstance(seq, int) or (card["sequences"] and seq <= card["sequences"][-1]):
            return fail(300317, "sequence number compare failed")
        card["sequences"].append(seq)
        card["streaming"] = json.loads(call.json["settings"])["config"]["streaming_mode"]
        return ok()

    # --- long connection ----------------------------------------------------------------

    async def _endpoint(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        if call.json != {"AppID": APP_ID, "AppSecret": APP_SECRET}:
            return web.json_response({"code": 1000040344, "msg": "wrong app credentials"})
        if self.ws_refuse:
            return web.json_response({"code": 1, "msg": "system busy"})
        host = self.url.split("://", 1)[1]
        conf = {"ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 0, "PingInterval": 30}
        url = f"ws://{host}/ws?device_id=dev{self.connects + 1}&service_id=42&access_key=secret&ticket=t"
        return web.json_response({"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": conf}})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connects += 1
        self.sockets.append(ws)
        self.changed.set()
        try:
            for message_id, payload in list(self.pending.items()):
                await ws.send_bytes(event_frame(message_id, payload))
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                frame = Frame()
                frame.ParseFromString(msg.data)
                headers = {h.key: h.value for h in frame.headers}
                if frame.method == 1 and headers.get("type") == "event":
                    answer = json.loads(frame.payload)
                    if answer.get("code") == 200 and headers["message_id"] in self.pending:
                        del self.pending[headers["message_id"]]
                        self.acked.append(headers["message_id"])
                    elif answer.get("code") != 200:
                        self.refused.append(headers["message_id"])
                    self.changed.set()
        finally:
            self.sockets.remove(ws)
            self.changed.set()
        return ws

    async def push(self, event: dict[str, Any]) -> str:
        """Send an event over the open long connection (again on reconnect until acked)."""
        message_id = uuidlib.uuid4().hex
        payload = json.dumps(event).encode()
        self.pending[message_id] = payload
        if self.sockets and not self.sockets[-1].closed:
            with contextlib.suppress(ConnectionError):  # gone: it is pushed again on the next connection
                await self.sockets[-1].send_bytes(event_frame(message_id, payload))
        return message_id


def event_frame(message_id: str, payload: bytes) -> bytes:
    from lark_oapi.ws.pb.pbbp2_pb2 import Frame

    frame = Frame()
    for key, value in (
        ("type", "event"),
        ("message_id", message_id),
        ("sum", "1"),
        ("seq", "0"),
        ("trace_id", uuidlib.uuid4().hex),
    ):
        h = frame.headers.add()
        h.key, h.value = key, value
    frame.service, frame.method, frame.SeqID, frame.LogID = 42, 1, 0, 0
    frame.payload = payload
    return bytes(frame.SerializeToString())


# --- events, encryption and signing ------------------------------------------------------------

_event_ids = itertools.count(1)


def message_event(
    text: str = "hello",
    *,
    chat_type: str = "p2p",
    sender: str = USER_OPEN_ID,
    chat_id: str = GROUP_CHAT_ID,
    message_id: str | None = None,
    mentions: list[dict[str, Any]] | None = None,
    message_type: str = "text",
    content: dict[str, Any] | None = None,
    thread_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An `im.message.receive_v1` event v2, as the platform documents it."""
    n = next(_event_ids)
    message: dict[str, Any] = {
        "message_id": message_id or f"om_in{n:06d}",
        "root_id": "",
        "parent_id": "",
        "create_time": str(int(time.time() * 1000)),
        "chat_id": chat_id if chat_type == "group" else f"oc_p2p{n}",
        "chat_type": chat_type,
        "message_type": message_type,
        "content": json.dumps(content if content is not None else {"text": text}, ensure_ascii=False),
        "mentions": mentions or [],
    }
    if thread_id:
        message["thread_id"] = thread_id
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id or f"5e3702a84e847582be8db7fb73283c{n:04d}",
            "token": VERIFICATION_TOKEN,
            "create_time": str(int(time.time() * 1000)),
            "event_type": "im.message.receive_v1",
            "tenant_key": "2ca1d211f64f6438",
            "app_id": APP_ID,
        },
        "event": {
            "sender": {
                "sender_id": {
                    "union_id": "on_8ed6aa67826108097d9ee143816345",
                    "user_id": "e33ggbyz",
                    "open_id": sender,
                },
                "sender_type": "user",
                "tenant_key": "2ca1d211f64f6438",
            },
            "message": message,
        },
    }


def bot_mention(key: str = "@_user_1") -> dict[str, Any]:
    return {
        "key": key,
        "id": {"union_id": "on_bot", "user_id": "", "open_id": BOT_OPEN_ID},
        "name": BOT_NAME,
        "tenant_key": "2ca1d211f64f6438",
    }


def encrypt(plaintext: str, key: str = ENCRYPT_KEY) -> str:
    """What Feishu puts in `encrypt`: base64(IV + AES-256-CBC(SHA-256(key), PKCS#7))."""
    return encrypt_bytes(plaintext.encode(), key)


def encrypt_bytes(plaintext: bytes, key: str = ENCRYPT_KEY) -> str:
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(hashlib.sha256(key.encode()).digest()), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + enc.update(data) + enc.finalize()).decode()


def signed(
    body: bytes, key: str = ENCRYPT_KEY, *, timestamp: str | None = None, nonce: str = "n0nce"
) -> dict[str, str]:
    ts = timestamp or str(int(time.time()))
    sig = hashlib.sha256((ts + nonce + key).encode() + body).hexdigest()
    return {"X-Lark-Request-Timestamp": ts, "X-Lark-Request-Nonce": nonce, "X-Lark-Signature": sig}


def encrypted_body(event: dict[str, Any], key: str = ENCRYPT_KEY) -> bytes:
    return json.dumps({"encrypt": encrypt(json.dumps(event, ensure_ascii=False), key)}).encode()


async def post_event(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/webhooks/feishu", data=body, headers={"Content-Type": "application/json", **(headers or {})}
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


async def post_signed(url: str, event: dict[str, Any], key: str = ENCRYPT_KEY) -> tuple[int, Any]:
    body = encrypted_body(event, key)
    return await post_event(url, body, signed(body, key))


def feishu_toml(
    api_base: str,
    *,
    mode: str = "webhook",
    streaming: bool = True,
    encrypt_key: str | None = ENCRYPT_KEY,
    public_url: str | None = None,
) -> str:
    lines = [
        "[feishu]",
        "enabled = true",
        f'app_id = "{APP_ID}"',
        f'app_secret = "{APP_SECRET}"',
        f'verification_token = "{VERIFICATION_TOKEN}"',
        f'mode = "{mode}"',
        f"streaming = {'true' if streaming else 'false'}",
        f'api_base = "{api_base}"',
    ]
    if encrypt_key:
        lines.append(f'encrypt_key = "{encrypt_key}"')
    # A public address makes the web chat public too: it then needs its token.
    head = f'[http]\npublic_url = "{public_url}"\n[web]\ntoken = "web-token-0123"\n' if public_url else ""
    return head + "\n".join(lines) + "\n"
