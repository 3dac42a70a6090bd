"""A test platform of the tests' own: a webhook in, and a send API on a fake server out.

Inbound: `POST /webhooks/fake` with JSON `{"id", "chat", "user", "text", "group": bool,
"mention": bool}`; a missing/wrong `X-Fake-Secret` header is refused (401).
Outbound: `POST <api_base>/send` with `{"chat", "text", "quote", "media": [...]}`; the
fake answers 200 `{"ok": true, "message_id": "..."}`, 5xx, or 429 with `retry_after`.
"""

from __future__ import annotations

import hmac
import json

import aiohttp
from aiohttp import web

from hub.channels.base import Channel, ChannelLimits, Ingress, SendRequest, SendResult
from hub.errors import BadPayload, SendError, VerificationFailed
from hub.events import ChatRef, Event, Message, Text, User, segment_to_dict

SECRET = "fake-secret"


class FakeChannel(Channel):
    name = "fake"
    limits = ChannelLimits(text_max=500, can_quote=True)

    def __init__(self, api_base: str) -> None:
        self.api_base = api_base
        self.ingress: Ingress | None = None
        self._http: aiohttp.ClientSession | None = None

    def bind(self, ingress: Ingress) -> None:
        self.ingress = ingress

    @property
    def bot_names(self) -> list[str]:
        return ["FakeBot"]

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhooks/fake", self.webhook)]

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._http:
            await self._http.close()

    async def webhook(self, request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get("X-Fake-Secret", ""), SECRET):
            raise VerificationFailed("wrong secret", 401)
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise BadPayload("body is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("text"), str):
            raise BadPayload("need id and text strings")
        kind = "group" if body.get("group") else "private"
        chat = ChatRef("fake", kind, str(body.get("chat", "c1")))
        event = Event(
            id=body["id"],
            channel="fake",
            chat=chat,
            sender=User("fake", str(body.get("user", "u1")), "Tester"),
            message=Message((Text(body["text"]),)),
            mentions_bot=bool(body.get("mention")),
        )
        assert self.ingress is not None
        new = await self.ingress.submit(event)
        return web.json_response({"ok": True, "new": new})

    async def send(self, request: SendRequest) -> SendResult:
        assert self._http is not None
        payload = {
            "chat": str(request.target),
            "text": request.message.text,
            "quote": request.quote,
            "media": [segment_to_dict(m) for m in request.message.media],
        }
        async with self._http.post(f"{self.api_base}/send", json=payload) as resp:
            data = await resp.json(content_type=None)
            if resp.status == 429:
                raise SendError("rate limited", retryable=True, retry_after=float(data.get("retry_after", 1)))
            if resp.status >= 500:
                raise SendError(f"server error {resp.status}", retryable=True)
            if resp.status >= 400:
                raise SendError(f"refused {resp.status}", retryable=False)
            return SendResult((str(data.get("message_id", "")),))
