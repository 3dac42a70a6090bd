"""WeChat Official Account (公众号): the callback at /webhooks/wechat, and replies.

In: GET is the URL check (echostr back when the signature is right); POST carries a message,
in plain mode (signature over token, timestamp, nonce) or safe mode (msg_signature over the
`<Encrypt>` too, AES with the app id checked). The event is stored in the inbox, deduplicated
on MsgId (events: FromUserName + CreateTime), before WeChat gets its answer.

Out, `reply_mode = "push"` (default): WeChat gets `success` at once, and every reply goes
through the customer-service API (`/cgi-bin/message/custom/send`), media uploaded first.
`reply_mode = "passive"`: see wechat_passive.py. A `subscribe` is answered with the greeting
directly in the HTTP answer, in both modes.

Plain mode's signature does not cover the body: replay.py bounds its timestamp and binds each
(timestamp, nonce) to one body, and its events are marked `body_unauthenticated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from hub.channels.base import Channel, ChannelLimits, Ingress, SendResult
from hub.channels.replay import ReplayGuard
from hub.channels.wechat.api import WeChatApi
from hub.channels.wechat.inbound import CallbackCrypto, Inbound, open_envelope, parse_inbound
from hub.channels.wechat.outbound import MB, MediaPreparer, render, send_parts
from hub.channels.wechat.passive import HELD_TEXT_MAX, PassiveReplies
from hub.errors import ConfigError, SendError
from hub.events import ChatRef, Message, segment_to_dict
from hub.fetch import Fetcher
from hub.settings import WechatSettings
from hub.storage.chats import ChatRepo
from hub.storage.held import HeldReplyRepo
from hub.storage.media import MediaStore
from hub.storage.nonces import NonceRepo
from hub.storage.personas import PersonaRepo

log = logging.getLogger("hub.wechat")

DEFAULT_API = "https://api.weixin.qq.com"
TEXT_MAX = 2048  # bytes of one customer-service text
SUBSCRIBE_EVENTS = frozenset({"subscribe", "subscribe_scan"})
KEPT_EVENTS = SUBSCRIBE_EVENTS | {"unsubscribe"}
WELCOME = "Hello! Send me a message to chat, or /help to see what I can do."

Greeting = Callable[[ChatRef], Awaitable[str]]


async def plain_welcome(chat: ChatRef) -> str:
    return WELCOME


class PersonaGreeting:
    """What a new follower is told: the greeting of the chat's persona (or the default one)."""

    def __init__(self, chats: ChatRepo, personas: PersonaRepo) -> None:
        self._chats = chats
        self._personas = personas

    async def __call__(self, chat: ChatRef) -> str:
        try:
            chosen = (await self._chats.get(str(chat))).persona
            persona = (await self._personas.get(chosen) if chosen else None) or await self._personas.default()
        except Exception:  # the greeting is a courtesy: never worth failing the callback for
            log.exception("event=greeting_failed chat=%s", chat)
            return WELCOME
        return (persona.greeting.strip() if persona else "") or WELCOME


def success() -> web.Response:
    """ "No passive reply": WeChat neither retries nor shows anything."""
    return web.Response(text="success", content_type="text/plain")


def cdata_safe(text: str) -> str:
    """Text for a CDATA section: a literal `]]>` would end it early."""
    return text.replace("]]>", "]]]]><![CDATA[>")


def connection_open(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


class WechatChannel(Channel):
    name = "wechat"
    limits = ChannelLimits(
        text_max=TEXT_MAX,
        text_unit="bytes",
        caption_max=TEXT_MAX,
        media_max={"image": 10 * MB, "audio": 2 * MB, "video": 10 * MB},
    )

    def __init__(
        self,
        settings: WechatSettings,
        *,
        ingress: Ingress,
        media: MediaStore,
        public_url: str | None,
        held: HeldReplyRepo | None = None,
        nonces: NonceRepo | None = None,
        greeting: Greeting = plain_welcome,
        passive_wait_s: float = 4.5,
        fetcher: Fetcher,
    ) -> None:
        if not (settings.app_id and settings.app_secret and settings.token):
            raise ConfigError([("wechat", "app_id, app_secret and token are required")])
        self._ingress = ingress
        aes_key = settings.encoding_aes_key.get_secret_value() if settings.encoding_aes_key else None
        self._crypto = CallbackCrypto(settings.token.get_secret_value(), aes_key, settings.app_id, enterprise=False)
        self._replay: ReplayGuard | None = None
        if not self._crypto.safe:
            if nonces is None:
                raise ConfigError([("wechat.encoding_aes_key", "plain mode needs the callback-nonces store")])
            self._replay = ReplayGuard(nonces, self.name)
            log.warning("event=wechat_plain_mode body_signed=false")
        secret = settings.app_secret.get_secret_value()
        self.api = WeChatApi(
            settings.api_base or DEFAULT_API,
            "/cgi-bin/token",
            {"grant_type": "client_credential", "appid": settings.app_id, "secret": secret},
        )
        self._media = MediaPreparer(
            self.api,
            media,
            public_url,
            limits={"image": 10 * MB, "voice": 2 * MB, "video": 10 * MB},
            voice_formats=frozenset({"amr", "mp3"}),
            fetcher=fetcher,
        )
        self.passive: PassiveReplies | None = None
        if settings.reply_mode == "passive":
            if held is None:
                raise ConfigError([("wechat.reply_mode", "passive mode needs the held-replies store")])
            self.passive = PassiveReplies(held, wait_s=passive_wait_s)
        self._greeting = greeting
        self._housekeeping: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/webhooks/wechat", self.verify_url), web.post("/webhooks/wechat", self.webhook)]

    async def start(self) -> None:
        await self.api.start()
        if self.passive is not None:
            self._housekeeping = asyncio.create_task(self._expire_held(self.passive), name="wechat-held-expiry")

    async def stop(self) -> None:
        if self.passive is not None:
            self.passive.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping

    async def close(self) -> None:
        await self.api.stop()

    def status(self) -> str:
        return "failing" if self.api.failing else "running"

    # --- in ---------------------------------------------------------------------------------

    async def verify_url(self, request: web.Request) -> web.Response:
        """The URL check of the admin console: echo `echostr` when the signature is right."""
        q = request.query
        self._crypto.check(q.get("signature"), q.get("timestamp", ""), q.get("nonce", ""))
        return web.Response(text=q.get("echostr", ""), content_type="text/plain")

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        arrived = time.monotonic()
        body = await request.read()
        xml = open_envelope(self._crypto, body, request.query)
        msg = parse_inbound(xml, enterprise=False)
        if self._replay is not None:
            # After the signature and the parse, before anything is stored or handled.
            await self._replay.check(request.query.get("timestamp", ""), request.query.get("nonce", ""), body)
        if msg.kind == "event" and msg.event not in KEPT_EVENTS:
            log.info("event=wechat_ignored kind=event name=%s", msg.event)
            return success()
        event = msg.to_event(self.name, body_signed=self._crypto.safe)
        chat = event.chat
        new = await self._ingress.submit(event)
        log.info(
            "event=wechat_in id=%s kind=%s new=%s ms=%.1f",
            event.id,
            msg.event or msg.kind,
            new,
            (time.perf_counter() - started) * 1000,
        )
        if msg.event in SUBSCRIBE_EVENTS:
            return self._passive_reply(request, msg, {"msgtype": "text", "text": await self._greeting(chat)})
        if self.passive is None:
            return success()
        payload = await self.passive.answer(
            str(chat),
            event.id,
            expects_reply=bool(msg.message.text or msg.message.media),
            is_open=lambda: connection_open(request),
            arrived=arrived,
        )
        log.info(
            "event=wechat_answered id=%s passive=%s ms=%.1f",
            event.id,
            payload["msgtype"] if payload else "none",
            (time.perf_counter() - started) * 1000,
        )
        return self._passive_reply(request, msg, payload) if payload else success()

    def _passive_reply(self, request: web.Request, msg: Inbound, payload: Mapping[str, Any]) -> web.Response:
        from wechatpy import replies

        common = {"source": msg.receiver, "target": msg.sender, "time": int(time.time())}
        kind = payload["msgtype"]
        reply: Any
        if kind == "image":
            reply = replies.ImageReply(media_id=payload["media_id"], **common)
        elif kind == "voice":
            reply = replies.VoiceReply(media_id=payload["media_id"], **common)
        elif kind == "video":
            reply = replies.VideoReply(
                media_id=payload["media_id"],
                title=cdata_safe(payload.get("title", "")),
                description=cdata_safe(payload.get("description", "")),
                **common,
            )
        else:
            reply = replies.TextReply(content=cdata_safe(str(payload.get("text", ""))), **common)
        xml = reply.render()
        if self._crypto.safe:
            xml = self._crypto.encrypt_reply(xml, request.query.get("nonce", ""), str(int(time.time())))
        return web.Response(text=xml, content_type="application/xml")

    # --- out --------------------------------------------------------------------------------

    async def send(
        self,
        target: ChatRef,
        message: Message,
        *,
        quote: str | None = None,
        context: Mapping[str, Any] | None = None,
        progress: int = 0,
        on_progress: Any = None,
    ) -> SendResult:
        if target.channel != self.name:
            raise SendError(f"not a WeChat chat: {target}", retryable=False)
        if self.passive is not None:
            # Prepared whole (media uploaded) and held in one go: the request waiting for it
            # sees the complete reply or none of it.
            held: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for part in render(message, HELD_TEXT_MAX):
                payload = await self._media.prepare(part)
                if payload["msgtype"] != "text":
                    # Uploaded media lives 3 days at WeChat; a reply held longer goes as a link.
                    payload["expired"] = await self._media.expired_text(part)
                what = segment_to_dict(part.media) if part.media is not None else {"text": part.text}
                held.append((what, payload))
            if held:
                await self.passive.hold(str(target), quote, held)
            return SendResult()

        async def post(payload: dict[str, Any]) -> dict[str, Any]:
            return await self.api.call("/cgi-bin/message/custom/send", json=custom_message(target.chat_id, payload))

        parts = render(message, TEXT_MAX)
        ids = await send_parts(parts, self._media.prepare, post, progress=progress, on_progress=on_progress)
        return SendResult(tuple(ids))

    async def _expire_held(self, passive: PassiveReplies) -> None:
        while True:
            try:
                if removed := await passive.expire():
                    log.info("event=held_replies_expired count=%d", removed)
            except Exception:
                log.exception("event=held_expiry_failed")
            await asyncio.sleep(3600)


def custom_message(openid: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """A customer-service message body for a prepared part."""
    kind = payload["msgtype"]
    body: dict[str, Any] = {"touser": openid, "msgtype": kind}
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
