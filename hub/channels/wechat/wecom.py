"""WeCom (企业微信) self-built app: the callback at /webhooks/wecom, and replies.

The callback is always encrypted, with the corp id where an Official Account has its app id:
GET is the URL check (the `echostr` decrypted and echoed), POST a message from a member of the
app, stored in the inbox (deduplicated on MsgId; events: FromUserName + CreateTime) before the
answer. Replies go through `/cgi-bin/message/send` with the app's agentid, media uploaded first;
WeCom has file messages, so audio that is not AMR voice goes as a file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hub.channels.base import Channel, ChannelLimits, Ingress, SendResult
from hub.channels.wechat.api import WeChatApi
from hub.channels.wechat.inbound import CallbackCrypto, Inbound, open_envelope, parse_inbound
from hub.channels.wechat.official import SUBSCRIBE_EVENTS, Greeting, cdata_safe, plain_welcome
from hub.channels.wechat.outbound import MB, MediaPreparer, render, send_parts
from hub.errors import ConfigError, SendError
from hub.events import ChatRef, Message
from hub.fetch import Fetcher
from hub.settings import WecomSettings
from hub.storage.media import MediaStore

log = logging.getLogger("hub.wecom")

DEFAULT_API = "https://qyapi.weixin.qq.com"
TEXT_MAX = 2048  # bytes of one text message
KEPT_EVENTS = SUBSCRIBE_EVENTS | {"unsubscribe"}
MEDIA_LIMITS = {"image": 10 * MB, "voice": 2 * MB, "video": 10 * MB, "file": 20 * MB}


def no_reply() -> web.Response:
    """WeCom's "nothing to answer": an empty body."""
    return web.Response(text="", content_type="text/plain")


class WecomChannel(Channel):
    name = "wecom"
    limits = ChannelLimits(
        text_max=TEXT_MAX,
        text_unit="bytes",
        caption_max=TEXT_MAX,
        media_max={"image": 10 * MB, "audio": 2 * MB, "video": 10 * MB, "file": 20 * MB},
    )

    def __init__(
        self,
        settings: WecomSettings,
        *,
        ingress: Ingress,
        media: MediaStore,
        public_url: str | None,
        greeting: Greeting = plain_welcome,
        fetcher: Fetcher,
    ) -> None:
        if not (settings.corp_id and settings.agent_id and settings.secret and settings.token):
            raise ConfigError([("wecom", "corp_id, agent_id, secret and token are required")])
        if settings.encoding_aes_key is None:
            raise ConfigError([("wecom.encoding_aes_key", "required: WeCom callbacks are always encrypted")])
        self._ingress = ingress
        self._agent_id = str(settings.agent_id)
        self._crypto = CallbackCrypto(
            settings.token.get_secret_value(),
            settings.encoding_aes_key.get_secret_value(),
            settings.corp_id,
            enterprise=True,
        )
        self.api = WeChatApi(
            settings.api_base or DEFAULT_API,
            "/cgi-bin/gettoken",
            {"corpid": settings.corp_id, "corpsecret": settings.secret.get_secret_value()},
        )
        self._media = MediaPreparer(
            self.api, media, public_url, limits=MEDIA_LIMITS, voice_formats=frozenset({"amr"}), fetcher=fetcher
        )
        self._greeting = greeting

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/webhooks/wecom", self.verify_url), web.post("/webhooks/wecom", self.webhook)]

    async def start(self) -> None:
        await self.api.start()

    async def close(self) -> None:
        await self.api.stop()

    def status(self) -> str:
        return "failing" if self.api.failing else "running"

    # --- in ---------------------------------------------------------------------------------

    async def verify_url(self, request: web.Request) -> web.Response:
        """The URL check: `echostr` is encrypted; answer its plaintext when the signature holds."""
        q = request.query
        # Base64 has no spaces: a `+` decoded as a space by form-style query parsing goes back.
        echostr = q.get("echostr", "").replace(" ", "+")
        self._crypto.check(q.get("msg_signature"), q.get("timestamp", ""), q.get("nonce", ""), echostr)
        return web.Response(text=self._crypto.decrypt(echostr), content_type="text/plain")

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        xml = open_envelope(self._crypto, await request.read(), request.query)
        msg = parse_inbound(xml, enterprise=True)
        if msg.agent_id and msg.agent_id != self._agent_id:
            log.warning("event=wecom_ignored reason=other_agent agent=%s", msg.agent_id)
            return no_reply()
        if msg.kind == "event" and msg.event not in KEPT_EVENTS:
            log.info("event=wecom_ignored kind=event name=%s", msg.event)
            return no_reply()
        event = msg.to_event(self.name)
        chat = event.chat
        new = await self._ingress.submit(event)
        log.info(
            "event=wecom_in id=%s kind=%s new=%s ms=%.1f",
            event.id,
            msg.event or msg.kind,
            new,
            (time.perf_counter() - started) * 1000,
        )
        if msg.event in SUBSCRIBE_EVENTS:
            return self._greeting_reply(request, msg, await self._greeting(chat))
        return no_reply()

    def _greeting_reply(self, request: web.Request, msg: Inbound, text: str) -> web.Response:
        from wechatpy.enterprise.replies import TextReply

        reply = TextReply(
            source=msg.receiver,
            target=msg.sender,
            agent=int(self._agent_id) if self._agent_id.isdigit() else 0,
            content=cdata_safe(text),
            time=int(time.time()),
        )
        xml = self._crypto.encrypt_reply(reply.render(), request.query.get("nonce", ""), str(int(time.time())))
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
            raise SendError(f"not a WeCom chat: {target}", retryable=False)

        async def post(payload: dict[str, Any]) -> dict[str, Any]:
            out = await self.api.call("/cgi-bin/message/send", json=self.app_message(target.chat_id, payload))
            if target.chat_id in str(out.get("invaliduser") or "").split("|"):
                raise SendError(f"/cgi-bin/message/send: {target.chat_id} is not a user of the app", retryable=False)
            return out

        parts = render(message, TEXT_MAX)
        ids = await send_parts(parts, self._media.prepare, post, progress=progress, on_progress=on_progress)
        return SendResult(tuple(ids))

    def app_message(self, userid: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """An app message body for a prepared part."""
        kind = payload["msgtype"]
        agent: int | str = int(self._agent_id) if self._agent_id.isdigit() else self._agent_id
        body: dict[str, Any] = {"touser": userid, "msgtype": kind, "agentid": agent}
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
