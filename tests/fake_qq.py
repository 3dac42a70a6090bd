"""The official QQ bot platform from the hub's point of view, on 127.0.0.1.

`FakeQQ` runs two servers: the token host (`token_base`: `POST /app/getAppAccessToken`) and
the bot API (`api_base`: `/v2/users/{openid}/messages|files`, `/v2/groups/{group}/messages|
files`). The API checks what QQ checks: `Authorization: QQBot <token>` (401 otherwise), every
reply names a msg_id the platform delivered to that chat (40034105 without one), within its
window, a msg_seq unique per msg_id (40054005), at most 5 replies per msg_id (40034128). The
files API fetches the URL it is given (304082 when it cannot) and answers a `file_info`.

The other direction: `c2c()` / `group_at()` build the envelopes QQ posts, `post()` signs them
with the app secret (ed25519 over timestamp + body) and posts them to the hub's webhook.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from harness import FakeServer, Recorded

from hub.channels.qq.crypto import QQSigner

APP_ID = "102000001"
APP_SECRET = "naOC0ocQE3shWLAfffVLB1rhYPG7"
USER = "E4F4AEA33253A2797FB897C50B81D7ED"
GROUP = "C9F778FE6ADF9D1D1DBE395BF744A33A"
MEMBER = "E4F4AEA33253A2797FB897C50B81D7EE"
# What a reply to a msg_id past its window gets (code of "msg_id invalid", text "expired").
EXPIRED = 40034024


@dataclass
class Sent:
    """A reply the platform accepted."""

    chat: str  # "private:<openid>" or "group:<group_openid>"
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    @property
    def content(self) -> str:
        return str(self.body.get("content", ""))


class FakeQQ:
    def __init__(self, *, windows: dict[str, float] | None = None) -> None:
        self.tokens = FakeServer()
        self.api = FakeServer()
        self.windows = windows or {"private": 3600.0, "group": 300.0}
        self.valid_tokens: set[str] = set()
        self.expires_in = "7200"
        self.sent: list[Sent] = []
        self.refused: list[tuple[int, dict[str, Any]]] = []
        self.files: dict[str, str] = {}  # file_info → url
        self.fetch_fails = False
        # Where a public address really is (the hub's public_url names a host of its own).
        self.resolve: dict[str, str] = {}
        # msg_id → (chat, delivered at): the messages the platform delivered to the bot.
        self.delivered: dict[str, tuple[str, float]] = {}
        self._seqs: dict[str, set[int]] = {}
        self._ids = itertools.count(1)
        self.tokens.on("POST", "/app/getAppAccessToken", self._token)
        for kind in ("users", "groups"):
            self.api.on("POST", f"/v2/{kind}/{{id}}/messages", self._message)
            self.api.on("POST", f"/v2/{kind}/{{id}}/files", self._file)

    async def start(self) -> None:
        await self.tokens.start()
        await self.api.start()

    async def stop(self) -> None:
        await self.api.stop()
        await self.tokens.stop()

    # --- the token host ---------------------------------------------------------------------

    def _token(self, rec: Recorded) -> web.Response:
        body = rec.json or {}
        if body.get("appId") != APP_ID or body.get("clientSecret") != APP_SECRET:
            return web.json_response({"code": 100016, "message": "invalid appid or secret"})
        token = secrets.token_hex(8)
        self.valid_tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": self.expires_in})

    def token_fetches(self) -> int:
        return len(self.tokens.calls("/app/getAppAccessToken"))

    # --- the bot API ------------------------------------------------------------------------

    def _refuse(self, status: int, code: int, message: str, body: dict[str, Any]) -> web.Response:
        self.refused.append((code, body))
        return web.json_response({"code": code, "message": message, "trace_id": secrets.token_hex(8)}, status=status)

    def _authorized(self, rec: Recorded) -> bool:
        auth = rec.headers.get("Authorization", "")
        return auth.startswith("QQBot ") and auth[6:] in self.valid_tokens

    @staticmethod
    def _chat(path: str) -> str:
        _, _, kind, chat_id, _ = path.split("/")
        return f"{'private' if kind == 'users' else 'group'}:{chat_id}"

    def _message(self, rec: Recorded) -> web.Response:
        body = rec.json if isinstance(rec.json, dict) else {}
        if not self._authorized(rec):
            return self._refuse(401, 11244, "token not exist or expire", body)
        chat = self._chat(rec.path)
        msg_id, seq = body.get("msg_id"), body.get("msg_seq")
        if not isinstance(msg_id, str) or msg_id not in self.delivered or self.delivered[msg_id][0] != chat:
            return self._refuse(400, 40034105, "msg_id is required (active messages are not allowed)", body)
        kind = chat.split(":", 1)[0]
        if time.monotonic() - self.delivered[msg_id][1] > self.windows[kind]:
            return self._refuse(400, EXPIRED, "回复消息msg_id已过期", body)
        seqs = self._seqs.setdefault(msg_id, set())
        if not isinstance(seq, int) or seq in seqs:
            return self._refuse(400, 40054005, "msg_seq repeated", body)
        if len(seqs) >= 5:
            return self._refuse(400, 40034128, "too many replies to this msg_id", body)
        if body.get("msg_type") == 7:
            info = (body.get("media") or {}).get("file_info")
            if info not in self.files:
                return self._refuse(400, 304003, "media file_info invalid", body)
        elif body.get("msg_type") != 0 or not str(body.get("content", "")).strip():
            return self._refuse(400, 304003, "content or msg_type invalid", body)
        seqs.add(seq)
        self.sent.append(Sent(chat, body))
        return web.json_response({"id": f"sent-{next(self._ids)}", "timestamp": int(time.time())})

    async def _file(self, rec: Recorded) -> web.Response:
        body = rec.json if isinstance(rec.json, dict) else {}
        if not self._authorized(rec):
            return self._refuse(401, 11244, "token not exist or expire", body)
        url = body.get("url")
        if body.get("file_type") not in (1, 2, 3) or not isinstance(url, str):
            return self._refuse(400, 304003, "file_type and url are required", body)
        ok = not self.fetch_fails
        fetch = url
        for public, real in self.resolve.items():
            if url.startswith(public + "/"):
                fetch = real + url[len(public) :]
        if ok:
            try:
                async with aiohttp.ClientSession() as http, http.get(fetch) as resp:
                    ok = resp.status == 200 and bool(await resp.read())
            except aiohttp.ClientError:
                ok = False
        if not ok:
            return self._refuse(400, 304082, "rich media download failed", body)
        info = secrets.token_hex(12)
        self.files[info] = url
        return web.json_response({"file_uuid": secrets.token_hex(8), "file_info": info, "ttl": 3600})

    def replies(self, chat: str | None = None) -> list[Sent]:
        return [s for s in self.sent if chat is None or s.chat == chat]

    # --- what QQ posts to the webhook -------------------------------------------------------

    def _deliver(self, chat: str) -> str:
        msg_id = f"ROBOT1.0_{secrets.token_urlsafe(24)}"
        self.delivered[msg_id] = (chat, time.monotonic())
        return msg_id

    def c2c(self, content: str, *, user: str = USER, attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "author": {"user_openid": user},
            "content": content,
            "id": self._deliver(f"private:{user}"),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        }
        if attachments:
            d["attachments"] = attachments
        return {"op": 0, "id": f"C2C_MESSAGE_CREATE:{secrets.token_hex(8)}", "d": d, "t": "C2C_MESSAGE_CREATE"}

    def group_at(self, content: str, *, group: str = GROUP, member: str = MEMBER) -> dict[str, Any]:
        d = {
            "author": {"member_openid": member},
            "content": content,
            "group_openid": group,
            "id": self._deliver(f"group:{group}"),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        }
        return {
            "op": 0,
            "id": f"GROUP_AT_MESSAGE_CREATE:{secrets.token_hex(8)}",
            "d": d,
            "t": "GROUP_AT_MESSAGE_CREATE",
        }


def signed_headers(body: bytes, *, secret: str = APP_SECRET, timestamp: str | None = None) -> dict[str, str]:
    ts = timestamp or str(int(time.time()))
    return {
        "X-Signature-Ed25519": QQSigner(secret).sign(ts.encode() + body),
        "X-Signature-Timestamp": ts,
        "X-Bot-Appid": APP_ID,
        "Content-Type": "application/json",
        "User-Agent": "QQBot-Callback",
    }


async def post(
    hub_url: str, payload: dict[str, Any] | bytes, *, headers: dict[str, str] | None = None, sign: bool = True
) -> tuple[int, Any]:
    """POST an envelope to the hub's webhook (signed by default); returns status and JSON."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
    hdrs = signed_headers(body) if sign else {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    async with aiohttp.ClientSession() as http, http.post(f"{hub_url}/webhooks/qq", data=body, headers=hdrs) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text
