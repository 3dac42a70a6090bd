"""WeChat Official Account (公众号): the callback at /webhooks/wechat, and replies.

In: GET is the URL check (echostr back when the signature is right); POST carries a message,
in plain mode (signature over token, timestamp, nonce) or safe mode (msg_signature over the
`<Encrypt>` too, AES with the app id checked). The event is stored in the inbox, deduplicated
on MsgId (events: FromUserName + CreateTime), before WeChat gets its answer.

Out, `reply_mode = "push"` (default): WeChat gets `success` at once, and every reply goes
through the customer-service API (`/cgi-bin/message/custom/send`), media uploaded first.
`reply_mode = "passive"`: see passive.py. A `subscribe` is answered with the greeting
directly in the HTTP answer, in both modes.

Plain mode's signature does not cover the body: replay.py bounds its timestamp and binds each
(timestamp, nonce) to one body, and its events are marked `body_unauthenticated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hub.channels.base import Ingress, SendRequest, SendResult
from hub.channels.parts import render
from hub.channels.replay import ReplayGuard
from hub.channels.wechat.api import WeChatApi
from hub.channels.wechat.core import (
    MB,
    Greeting,
    WechatCore,
    cdata_safe,
    limits_for,
    message_body,
    plain_welcome,
)
from hub.channels.wechat.inbound import CallbackCrypto, Inbound
from hub.channels.wechat.passive import HELD_TEXT_MAX, PassiveReplies
from hub.errors import BadPayload, ConfigError
from hub.events import ChatRef, Event, segment_to_dict
from hub.fetch import Fetcher
from hub.i18n.language import ChatLanguages
from hub.settings import WechatSettings
from hub.storage.held import HeldReplyRepo
from hub.storage.media import MediaStore
from hub.storage.nonces import NonceRepo

DEFAULT_API = "https://api.weixin.qq.com"
# Official Accounts have no file message.
MEDIA_MAX = {"image": 10 * MB, "voice": 2 * MB, "video": 10 * MB}


def success() -> web.Response:
    """ "No passive reply": WeChat neither retries nor shows anything."""
    return web.Response(text="success", content_type="text/plain")


def connection_open(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


class WechatChannel(WechatCore):
    name = "wechat"
    MEDIA_MAX = MEDIA_MAX
    VOICE_FORMATS = frozenset({"amr", "mp3"})
    limits = limits_for(MEDIA_MAX)

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
        languages: ChatLanguages | None = None,
    ) -> None:
        if not (settings.app_id and settings.app_secret and settings.token):
            raise ConfigError([("wechat", "app_id, app_secret and token are required")])
        aes_key = settings.encoding_aes_key.get_secret_value() if settings.encoding_aes_key else None
        crypto = CallbackCrypto(settings.token.get_secret_value(), aes_key, settings.app_id, enterprise=False)
        secret = settings.app_secret.get_secret_value()
        api = WeChatApi(
            settings.api_base or DEFAULT_API,
            "/cgi-bin/token",
            {
                "grant_type": "client_credential",
                "appid": settings.app_id,
                "secret": secret,
            },
        )
        super().__init__(
            crypto, api, ingress, media, public_url, greeting=greeting, fetcher=fetcher, languages=languages
        )
        self._replay: ReplayGuard | None = None
        if not crypto.safe:
            if nonces is None:
                raise ConfigError([("wechat.encoding_aes_key", "plain mode needs the callback-nonces store")])
            self._replay = ReplayGuard(nonces, self.name)
            self.log.warning("event=wechat_plain_mode body_signed=false")
        self.passive: PassiveReplies | None = None
        if settings.reply_mode == "passive":
            if held is None:
                raise ConfigError([("wechat.reply_mode", "passive mode needs the held-replies store")])
            self.passive = PassiveReplies(held, wait_s=passive_wait_s, languages=self.languages)
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        if self.passive is not None:
            self._housekeeping = asyncio.create_task(self._expire_held(self.passive), name="wechat-held-expiry")

    async def stop(self) -> None:
        if self.passive is not None:
            self.passive.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping

    # --- in ---------------------------------------------------------------------------------

    async def verify_url(self, request: web.Request) -> web.Response:
        """The URL check of the admin console: echo `echostr` when the signature is right."""
        q = request.query
        self._crypto.check(q.get("signature"), q.get("timestamp", ""), q.get("nonce", ""))
        echostr = q.get("echostr", "")
        if len(echostr) > 128 or not echostr.isascii() or not echostr.isalnum():
            raise BadPayload("echostr must be up to 128 letters and digits")
        if self._replay is not None:
            # The URL check signs the same (token, timestamp, nonce) as a plain-mode POST: the
            # pair is spent here, so a captured check URL cannot carry a forged message.
            await self._replay.check(q.get("timestamp", ""), q.get("nonce", ""), b"GET " + echostr.encode())
        return web.Response(text=echostr, content_type="text/plain", headers={"X-Content-Type-Options": "nosniff"})

    def nothing(self) -> web.Response:
        return success()

    async def check_replay(self, request: web.Request, body: bytes) -> None:
        if self._replay is not None:
            await self._replay.check(request.query.get("timestamp", ""), request.query.get("nonce", ""), body)

    def greeting_reply(self, request: web.Request, msg: Inbound, text: str) -> web.Response:
        return self._passive_reply(request, msg, {"msgtype": "text", "text": text})

    async def answer(self, request: web.Request, msg: Inbound, event: Event, arrived: float) -> web.Response:
        if self.passive is None:
            return success()
        payload = await self.passive.answer(
            str(event.chat),
            event.id,
            expects_reply=bool(msg.message.text or msg.message.media),
            is_open=lambda: connection_open(request),
            arrived=arrived,
        )
        self.log.info(
            "event=wechat_answered id=%s passive=%s ms=%.1f",
            event.id,
            payload["msgtype"] if payload else "none",
            (time.monotonic() - arrived) * 1000,
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

    async def send(self, request: SendRequest) -> SendResult:
        if self.passive is None or request.target.channel != self.name:
            return await super().send(request)
        # Prepared whole (media uploaded) and held in one go: the request waiting for it sees
        # the complete reply or none of it.
        held: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for part in render(request.message, HELD_TEXT_MAX):
            payload = await self._media.prepare(part, request)
            if payload["msgtype"] != "text":
                # Uploaded media lives 3 days at WeChat; a reply held longer goes as a link.
                payload["expired"] = await self._media.expired_text(part, request)
            what = segment_to_dict(part.media) if part.media is not None else {"text": part.text}
            held.append((what, payload))
        if held:
            await self.passive.hold(str(request.target), request.quote, held)
        return SendResult()

    async def post(self, target: ChatRef, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self.api.call("/cgi-bin/message/custom/send", json=custom_message(target.chat_id, payload))

    async def _expire_held(self, passive: PassiveReplies) -> None:
        while True:
            try:
                if removed := await passive.expire():
                    self.log.info("event=held_replies_expired count=%d", removed)
            except Exception:
                self.log.exception("event=held_expiry_failed")
            await asyncio.sleep(3600)


def custom_message(openid: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """A customer-service message body for a prepared part."""
    return message_body(openid, payload)
