"""WeCom (企业微信) self-built app: the callback at /webhooks/wecom, and replies.

The callback is always encrypted, with the corp id where an Official Account has its app id:
GET is the URL check (the `echostr` decrypted and echoed), POST a message from a member of the
app, stored in the inbox (deduplicated on MsgId; events: FromUserName + CreateTime) before the
answer. Replies go through `/cgi-bin/message/send` with the app's agentid, media uploaded first;
WeCom has file messages, so audio that is not AMR voice goes as a file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hub.channels.base import Ingress
from hub.channels.wechat.api import WeChatApi
from hub.channels.wechat.core import MB, Greeting, WechatCore, cdata_safe, limits_for, message_body, plain_welcome
from hub.channels.wechat.inbound import CallbackCrypto, Inbound
from hub.errors import ConfigError, SendError
from hub.events import ChatRef
from hub.fetch import Fetcher
from hub.i18n.language import ChatLanguages
from hub.settings import WecomSettings
from hub.storage.media import MediaStore

DEFAULT_API = "https://qyapi.weixin.qq.com"
MEDIA_MAX = {"image": 10 * MB, "voice": 2 * MB, "video": 10 * MB, "file": 20 * MB}


class WecomChannel(WechatCore):
    name = "wecom"
    PLATFORM = "WeCom"
    MEDIA_MAX = MEDIA_MAX
    VOICE_FORMATS = frozenset({"amr"})
    limits = limits_for(MEDIA_MAX)

    def __init__(
        self,
        settings: WecomSettings,
        *,
        ingress: Ingress,
        media: MediaStore,
        public_url: str | None,
        greeting: Greeting = plain_welcome,
        fetcher: Fetcher,
        languages: ChatLanguages | None = None,
    ) -> None:
        if not (settings.corp_id and settings.agent_id and settings.secret and settings.token):
            raise ConfigError([("wecom", "corp_id, agent_id, secret and token are required")])
        if settings.encoding_aes_key is None:
            raise ConfigError([("wecom.encoding_aes_key", "required: WeCom callbacks are always encrypted")])
        self._agent_id = str(settings.agent_id)
        crypto = CallbackCrypto(
            settings.token.get_secret_value(),
            settings.encoding_aes_key.get_secret_value(),
            settings.corp_id,
            enterprise=True,
        )
        api = WeChatApi(
            settings.api_base or DEFAULT_API,
            "/cgi-bin/gettoken",
            {"corpid": settings.corp_id, "corpsecret": settings.secret.get_secret_value()},
        )
        super().__init__(
            crypto, api, ingress, media, public_url, greeting=greeting, fetcher=fetcher, languages=languages
        )

    # --- in ---------------------------------------------------------------------------------

    async def verify_url(self, request: web.Request) -> web.Response:
        """The URL check: `echostr` is encrypted; answer its plaintext when the signature holds."""
        q = request.query
        # Base64 has no spaces: a `+` decoded as a space by form-style query parsing goes back.
        echostr = q.get("echostr", "").replace(" ", "+")
        self._crypto.check(q.get("msg_signature"), q.get("timestamp", ""), q.get("nonce", ""), echostr)
        return web.Response(text=self._crypto.decrypt(echostr), content_type="text/plain")

    def nothing(self) -> web.Response:
        """WeCom's "nothing to answer": an empty body."""
        return web.Response(text="", content_type="text/plain")

    def ignored(self, msg: Inbound) -> bool:
        if msg.agent_id and msg.agent_id != self._agent_id:
            self.log.warning("event=wecom_ignored reason=other_agent agent=%s", msg.agent_id)
            return True
        return False

    def greeting_reply(self, request: web.Request, msg: Inbound, text: str) -> web.Response:
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

    async def post(self, target: ChatRef, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        out = await self.api.call("/cgi-bin/message/send", json=self.app_message(target.chat_id, payload))
        if target.chat_id in str(out.get("invaliduser") or "").split("|"):
            raise SendError(f"/cgi-bin/message/send: {target.chat_id} is not a user of the app", retryable=False)
        return out

    def app_message(self, userid: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """An app message body for a prepared part."""
        agent: int | str = int(self._agent_id) if self._agent_id.isdigit() else self._agent_id
        return message_body(userid, payload, agentid=agent)
