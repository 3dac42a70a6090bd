"""The Feishu / Lark channel: events by webhook or long connection in, open-platform calls out.

In (webhook, `POST /webhooks/feishu`): decrypt with `encrypt_key`, check `X-Lark-Signature`
on every event (missing: 401 when an encrypt_key is set; wrong: 403), answer
`url_verification` after checking its token, store `im.message.receive_v1` in the inbox
(deduplicated on `header.event_id`), ack. The long connection delivers the same events.
Out: crypto, parsing, the API client, rendering and the streaming card live in their modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hub.channels.base import Channel, ChannelLimits, Ingress, LiveStream, SendRequest, SendResult, stop_tasks
from hub.channels.feishu.api import FeishuApi
from hub.channels.feishu.crypto import SIGNATURE, EventCrypto, token_matches
from hub.channels.feishu.members import GroupAdmins
from hub.channels.feishu.parse import CHANNEL, MESSAGE_EVENT, Envelope, envelope, parse_message, resource_of
from hub.channels.feishu.render import FILE_MAX, IMAGE_MAX, TEXT_MAX, FeishuSender, reply_target
from hub.channels.feishu.stream import FeishuCardStream, create_card
from hub.channels.payload import parse_object
from hub.errors import BadPayload, ConfigError, SendError, VerificationFailed
from hub.events import ChatRef, Event
from hub.fetch import Fetcher
from hub.i18n.language import ChatLanguages
from hub.settings import FeishuSettings
from hub.storage.db import Database
from hub.storage.media import MediaStore, StoredMedia

if TYPE_CHECKING:
    from hub.channels.feishu.longconn import LongConnection

log = logging.getLogger("hub.feishu")

DEFAULT_API = "https://open.feishu.cn"
WEBHOOK_PATH = "/webhooks/feishu"
START_TIMEOUT_S = 5.0


class FeishuChannel(Channel):
    name = CHANNEL

    def __init__(
        self,
        settings: FeishuSettings,
        *,
        ingress: Ingress,
        media: MediaStore,
        db: Database,
        public_url: str | None,
        fetcher: Fetcher,
        languages: ChatLanguages | None = None,
    ) -> None:
        if not (settings.app_id and settings.app_secret):
            raise ConfigError([("feishu", "app_id and app_secret are required")])
        self._settings = settings
        self._ingress = ingress
        self._media = media
        api_base = settings.api_base or DEFAULT_API
        self.api = FeishuApi(api_base, settings.app_id, settings.app_secret.get_secret_value())
        self._sender = FeishuSender(self.api, media, public_url, fetcher, languages)
        self._group_admins = GroupAdmins(self.api)
        key = settings.encrypt_key.get_secret_value() if settings.encrypt_key else ""
        self._crypto = EventCrypto(key) if key else None
        self._token = settings.verification_token.get_secret_value() if settings.verification_token else None
        self.limits = ChannelLimits(
            text_max=TEXT_MAX,
            text_unit="bytes",
            caption_max=TEXT_MAX,
            media_max={"image": IMAGE_MAX, "video": FILE_MAX, "audio": FILE_MAX, "file": FILE_MAX},
            can_edit=settings.streaming,  # a reply grows in a streaming card
            can_quote=True,
        )
        # Cleared for the rest of this process when creating a card fails (no permission, ...).
        self.cards_enabled = settings.streaming
        self.bot_open_id: str | None = None
        self._bot_name: str | None = None
        self.socket: LongConnection | None = None
        if settings.mode == "websocket":
            from hub.channels.feishu.longconn import LongConnection

            self.socket = LongConnection(
                app_id=settings.app_id,
                api_base=api_base,
                endpoint=self.api.ws_endpoint,
                deliver=self._deliver_frame,
                db=db,
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post(WEBHOOK_PATH, self.webhook)] if self._settings.mode == "webhook" else []

    async def start(self) -> None:
        self._closed = False
        await self.api.start()
        if not await self._learn_me():
            self._tasks.append(asyncio.create_task(self._learn_me_later(), name="feishu-bot-info"))
        if self.socket is not None:
            self._tasks.append(asyncio.create_task(self.socket.run(), name="feishu-ws"))

    async def stop(self) -> None:
        await stop_tasks(self._tasks)

    async def close(self) -> None:
        self._closed = True
        self._group_admins.close()
        await self.api.stop()

    async def _learn_me(self) -> bool:
        """The bot's own open_id, to tell an @mention of the bot from one of someone else."""
        try:
            bot = await asyncio.wait_for(self.api.bot_info(), timeout=START_TIMEOUT_S)
        except Exception as exc:
            log.warning("event=feishu_bot_info_failed error=%s", exc)
            return False
        open_id, name = bot.get("open_id"), bot.get("app_name")
        self.bot_open_id = open_id if isinstance(open_id, str) and open_id else None
        self._bot_name = name if isinstance(name, str) and name else None
        log.info("event=feishu_ready bot=%s mode=%s", self._bot_name, self._settings.mode)
        return self.bot_open_id is not None

    async def _learn_me_later(self) -> None:
        delay = 2.0
        while not await self._learn_me():
            await asyncio.sleep(delay)
            delay = min(60.0, delay * 2)

    @property
    def bot_names(self) -> Sequence[str]:
        return (self._bot_name,) if self._bot_name else ()

    def status(self) -> str:
        if self.api.failing:
            return "failing"
        if self.socket is not None:
            return "standby" if self.socket.lead_state == "standby" else self.socket.state
        return "running"

    # --- inbound --------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = await request.read()
        signed = SIGNATURE in request.headers
        if self._crypto is not None and signed:
            # Checked before anything in the body is looked at.
            self._crypto.verify(request.headers, body)
        data = parse_object(body)
        encrypted = "encrypt" in data
        if encrypted:
            if self._crypto is None:
                raise BadPayload("an encrypted event, but no encrypt_key is configured")
            data = parse_object(self._crypto.decrypt(data["encrypt"]))
        if data.get("type") == "url_verification":
            return self._challenge(data, keyed=self._crypto is not None and (encrypted or signed))
        if self._crypto is not None and not signed:
            raise VerificationFailed("missing X-Lark-Signature", 401)
        env = envelope(data)
        if self._crypto is None and (self._token is None or not token_matches(env.token, self._token)):
            raise VerificationFailed("wrong verification token", 403)
        # Without an encrypt_key nothing signs the body: the verification token travels in it.
        new = await self._take(env, unsigned=self._crypto is None)
        log.info(
            "event=feishu_in id=%s type=%s new=%s ms=%.1f",
            env.event_id,
            env.event_type,
            new,
            (time.perf_counter() - started) * 1000,
        )
        return web.json_response({})

    def _challenge(self, data: Mapping[str, Any], *, keyed: bool) -> web.Response:
        """The URL check: unsigned, so its token must be right (or it came under our key: `keyed`)."""
        challenge = data.get("challenge")
        if not isinstance(challenge, str) or not challenge or len(challenge) > 256:
            raise BadPayload("url_verification without a challenge")
        if self._token is not None:
            if not token_matches(data.get("token"), self._token):
                raise VerificationFailed("wrong verification token", 403)
        elif not keyed:
            raise VerificationFailed("no verification token to check, and not under the encrypt_key", 403)
        return web.json_response({"challenge": challenge})

    async def _take(self, env: Envelope, *, unsigned: bool = False) -> bool | None:
        """Store a message event in the inbox: True when new, False for a duplicate, None if ignored."""
        if env.event_type != MESSAGE_EVENT:
            log.debug("event=feishu_ignored type=%s", env.event_type)
            return None
        event = parse_message(env, self.bot_open_id, self._sender.sent_by_bot)
        if unsigned:
            event = dataclasses.replace(event, body_unauthenticated=True)
        if self.bot_open_id is not None and event.sender.id == self.bot_open_id:
            return None
        return await self._ingress.submit(event)

    async def _deliver_frame(self, payload: bytes) -> None:
        """An event from the long connection (raises only when it could not be stored)."""
        try:
            env = envelope(parse_object(payload))
            new = await self._take(env)
        except BadPayload as exc:
            # A shape this version cannot read: acked and skipped rather than redelivered forever.
            log.warning("event=feishu_ws_unreadable error=%s", exc)
            return
        log.info("event=feishu_in id=%s type=%s new=%s via=websocket", env.event_id, env.event_type, new)

    async def is_group_admin(self, event: Event) -> bool:
        return await self._group_admins.is_admin(event)

    # --- outbound -------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendResult:
        if request.target.channel != self.name:
            raise SendError(f"not a Feishu chat: {request.target}", retryable=False)
        if self._closed:
            raise SendError("the Feishu channel is closed", retryable=True, retry_after=5.0)
        ids = await self._sender.send(request)
        return SendResult(tuple(i for i in ids if i))

    async def open_stream(
        self, target: ChatRef, *, quote: str | None = None, context: Mapping[str, Any] | None = None
    ) -> LiveStream | None:
        """A streaming card; None (the reply then goes whole) when cards are off or fail."""
        if not self.cards_enabled or self._closed:
            return None
        try:
            card_id = await create_card(self.api)
        except Exception as exc:
            # No CardKit permission, a 4xx or 5xx, an answer that is not JSON: whole replies from now on.
            self.cards_enabled = False
            log.warning("event=feishu_cards_disabled error=%s", exc)
            return None
        stream = FeishuCardStream(self._sender, target, reply_target(target, quote, context), card_id)
        try:
            await stream.send_card()
        except Exception as exc:
            log.info("event=feishu_card_send_failed card=%s error=%s", card_id, exc)
            return None
        return stream

    async def fetch_media(
        self, file_id: str, *, name: str | None = None, mime: str | None = None, max_bytes: int | None = None
    ) -> StoredMedia:
        """Download a resource a user sent (by its segment's file_id) into the media store."""
        message_id, kind, key = resource_of(file_id)
        chunks = self.api.download(message_id, kind, key)
        return await self._media.save_stream(chunks, max_bytes=max_bytes or FILE_MAX * 4, name=name, mime=mime)
