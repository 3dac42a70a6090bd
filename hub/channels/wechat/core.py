"""What the Official Account and WeCom channels share: one callback flow, one message body
builder, one declaration of limits.

Both callbacks are the same shape: a signed (and maybe AES-encrypted) XML message in, stored
in the inbox (deduplicated on MsgId; events: FromUserName + CreateTime) before the answer; a
`subscribe` answered with the greeting in the HTTP answer. Both send the same way: the message
rendered into parts, media uploaded first, one API call per part. A subclass says where the
two differ: its API path and body extras, its empty answer, what it ignores, what it answers.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from hub.channels.base import Channel, ChannelLimits, Ingress, SendRequest, SendResult
from hub.channels.parts import Part, render, send_parts
from hub.channels.uploads import MediaPreparer
from hub.channels.wechat.api import WeChatApi
from hub.channels.wechat.inbound import CallbackCrypto, Inbound, open_envelope, parse_inbound
from hub.errors import SendError
from hub.events import ChatRef, Event
from hub.fetch import Fetcher
from hub.i18n import N_, texts
from hub.i18n.language import ChatLanguages, platform_languages
from hub.storage.media import MediaStore

MB = 1024 * 1024
TEXT_MAX = 2048  # bytes of one text message, on both platforms
SUBSCRIBE_EVENTS = frozenset({"subscribe", "subscribe_scan"})
KEPT_EVENTS = SUBSCRIBE_EVENTS | {"unsubscribe"}
WELCOME = N_("Hello! Send me a message to chat, or /help to see what I can do.")

# A new follower's greeting, from the skills side; None (or empty) gives WELCOME.
Greeting = Callable[[ChatRef], Awaitable[str | None]]


async def plain_welcome(chat: ChatRef) -> str | None:
    return None


def cdata_safe(text: str) -> str:
    """Text for a CDATA section: a literal `]]>` would end it early."""
    return text.replace("]]>", "]]]]><![CDATA[>")


def limits_for(media_max: Mapping[str, int]) -> ChannelLimits:
    """The channel's limits from its upload limits per platform media type (voice is audio)."""
    by_kind = {("audio" if kind == "voice" else kind): size for kind, size in media_max.items()}
    return ChannelLimits(text_max=TEXT_MAX, text_unit="bytes", caption_max=TEXT_MAX, media_max=by_kind)


def message_body(to: str, payload: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A customer-service / app message body for a prepared part."""
    kind = payload["msgtype"]
    body: dict[str, Any] = {"touser": to, "msgtype": kind, **extra}
    if kind == "text":
        body["text"] = {"content": payload["text"]}
    elif kind == "video":
        body["video"] = {
            "media_id": payload["media_id"],
            "title": payload.get("title", ""),
            "description": payload.get("description", ""),
        }
    else:
        body[kind] = {"media_id": payload["media_id"]}
    return body


class WechatCore(Channel):
    """The shared channel; a subclass sets `name`, `limits`, `MEDIA_MAX`, `VOICE_FORMATS`."""

    MEDIA_MAX: Mapping[str, int] = {}
    VOICE_FORMATS: frozenset[str] = frozenset()
    # Shown in a refusal for a target of another channel.
    PLATFORM = "WeChat"

    def __init__(
        self,
        crypto: CallbackCrypto,
        api: WeChatApi,
        ingress: Ingress,
        media: MediaStore,
        public_url: str | None,
        *,
        greeting: Greeting,
        fetcher: Fetcher,
        languages: ChatLanguages | None = None,
    ) -> None:
        self.log = logging.getLogger(f"hub.{self.name}")
        self._ingress = ingress
        self._crypto = crypto
        self.api = api
        self.languages = languages or platform_languages()
        self._media = MediaPreparer(
            api,
            media,
            public_url,
            limits=self.MEDIA_MAX,
            voice_formats=self.VOICE_FORMATS,
            fetcher=fetcher,
            languages=self.languages,
        )
        self._greeting = greeting

    def routes(self) -> list[web.RouteDef]:
        path = f"/webhooks/{self.name}"
        return [web.get(path, self.verify_url), web.post(path, self.webhook)]

    async def start(self) -> None:
        await self.api.start()

    async def close(self) -> None:
        await self.api.stop()

    def status(self) -> str:
        return "failing" if self.api.failing else "running"

    # --- in ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def verify_url(self, request: web.Request) -> web.Response:
        """The URL check of the admin console."""

    @abc.abstractmethod
    def nothing(self) -> web.Response:
        """The platform's "no reply" answer."""

    def ignored(self, msg: Inbound) -> bool:
        """Whether a parsed message is dropped unstored (the subclass logs why)."""
        return False

    async def answer(self, request: web.Request, msg: Inbound, event: Event, arrived: float) -> web.Response:
        """The HTTP answer after the event is stored (the greeting is answered before this)."""
        return self.nothing()

    @abc.abstractmethod
    def greeting_reply(self, request: web.Request, msg: Inbound, text: str) -> web.Response:
        """The greeting as the passive reply to a `subscribe`."""

    async def check_replay(self, request: web.Request, body: bytes) -> None:
        """After the signature and the parse, before anything is stored (plain mode)."""

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        arrived = time.monotonic()
        body = await request.read()
        xml = open_envelope(self._crypto, body, request.query)
        msg = parse_inbound(xml, enterprise=self._crypto.enterprise)
        await self.check_replay(request, body)
        if self.ignored(msg):
            return self.nothing()
        if msg.kind == "event" and msg.event not in KEPT_EVENTS:
            self.log.info("event=%s_ignored kind=event name=%s", self.name, msg.event)
            return self.nothing()
        event = msg.to_event(self.name, body_signed=self._crypto.safe)
        new = await self._ingress.submit(event)
        self.log.info(
            "event=%s_in id=%s kind=%s new=%s ms=%.1f",
            self.name,
            event.id,
            msg.event or msg.kind,
            new,
            (time.perf_counter() - started) * 1000,
        )
        if msg.event in SUBSCRIBE_EVENTS:
            return self.greeting_reply(request, msg, await self._greeting(event.chat) or await self._welcome(event))
        return await self.answer(request, msg, event, arrived)

    async def _welcome(self, event: Event) -> str:
        """The greeting where the chat's persona has none, in the chat's language."""
        return texts(await self.languages.of_chat(str(event.chat)))(WELCOME)

    # --- out --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def post(self, target: ChatRef, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        """One prepared part to the platform's send API."""

    async def send(self, request: SendRequest) -> SendResult:
        if request.target.channel != self.name:
            raise SendError(f"not a {self.PLATFORM} chat: {request.target}", retryable=False)

        async def send_one(n: int, part: Part) -> str | None:
            out = await self.post(request.target, await self._media.prepare(part, request))
            return str(out["msgid"]) if out.get("msgid") else None

        ids = await send_parts(render(request.message, TEXT_MAX), request, send_one)
        return SendResult(tuple(ids))
