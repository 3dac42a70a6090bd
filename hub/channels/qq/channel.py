"""The official QQ bot platform: `POST /webhooks/qq` in, passive replies out.

In: every request is verified first (ed25519 over timestamp + body, op 13 included: signing a
URL check nobody verified would make the endpoint a signing oracle for forged events); then
the envelope is parsed, the event stored in the inbox (deduplicated on the envelope id) and
QQ gets `{"op": 12, "d": 0}`. A new message opens its reply window and releases what waited
in the outbox for that chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from hub.channels.base import Channel, ChannelLimits, Ingress, SendRequest, SendResult
from hub.channels.qq import parse
from hub.channels.qq.api import QQApi
from hub.channels.qq.crypto import QQSigner
from hub.channels.qq.passive import PassiveReplies
from hub.channels.qq.send import TEXT_BYTES, QQSender
from hub.errors import BadPayload, ConfigError, SendError, VerificationFailed
from hub.i18n.language import ChatLanguages
from hub.settings import QQSettings
from hub.storage.media import MediaStore
from hub.storage.reply_slots import ReplySlotRepo

log = logging.getLogger("hub.qq")

MB = 1024 * 1024
ACK = {"op": parse.OP_ACK, "d": 0}
ReleaseWaiting = Callable[[str], Awaitable[list[int]]]
# A reply being sent while the chat's message came in may be parked just after the release:
# release that chat once more a little later, so it goes with this message, not the next.
RELEASE_AGAIN_S = 3.0


class QQChannel(Channel):
    name = "qq"
    limits = ChannelLimits(
        text_max=TEXT_BYTES,
        text_unit="bytes",
        caption_max=TEXT_BYTES,
        media_max={"image": 10 * MB, "video": 100 * MB, "audio": 10 * MB},
    )

    def __init__(
        self,
        settings: QQSettings,
        *,
        ingress: Ingress,
        media: MediaStore,
        public_url: str | None,
        slots: ReplySlotRepo,
        release_waiting: ReleaseWaiting,
        windows: Mapping[str, float] | None = None,
        languages: ChatLanguages | None = None,
    ) -> None:
        if not (settings.app_id and settings.app_secret and settings.app_secret.get_secret_value()):
            raise ConfigError([("qq", "app_id and app_secret are required")])
        secret = settings.app_secret.get_secret_value()
        self._app_id = settings.app_id
        self._ingress = ingress
        self._signer = QQSigner(secret)
        self.api = QQApi(settings.app_id, secret, api_base=settings.api_base, token_base=settings.token_base)
        self.passive = PassiveReplies(slots, windows)
        self._sender = QQSender(self.api, media, public_url, self.passive, languages)
        self._release_waiting = release_waiting
        self._housekeeping: asyncio.Task[None] | None = None
        # chat → its one pending second release, and when it is due (the latest message + the delay).
        self._later: dict[str, asyncio.Task[None]] = {}
        self._release_due: dict[str, float] = {}
        self.release_again_s = RELEASE_AGAIN_S

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhooks/qq", self.webhook)]

    async def start(self) -> None:
        await self.api.start()
        self._housekeeping = asyncio.create_task(self._expire_slots(), name="qq-slot-expiry")

    async def stop(self) -> None:
        later = list(self._later.values())
        for task in later:
            task.cancel()
        await asyncio.gather(*later, return_exceptions=True)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping

    async def close(self) -> None:
        await self.api.stop()

    def status(self) -> str:
        return "failing" if self.api.failing else "running"

    # --- in ---------------------------------------------------------------------------------

    def _verify(self, request: web.Request, body: bytes) -> None:
        appid = request.headers.get("X-Bot-Appid")
        if appid is not None and not hmac.compare_digest(
            appid.encode("utf-8", "surrogateescape"), self._app_id.encode("utf-8")
        ):
            raise VerificationFailed("X-Bot-Appid is not this bot", status=403)
        signature = request.headers.get("X-Signature-Ed25519")
        timestamp = request.headers.get("X-Signature-Timestamp")
        if not signature or not timestamp:
            raise VerificationFailed("unsigned request", status=401)
        if not self._signer.verify(signature, timestamp, body):
            raise VerificationFailed("bad signature", status=403)

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = await request.read()
        self._verify(request, body)  # before anything else, the URL check included
        env = parse.envelope(body)
        if env.op == parse.OP_VALIDATION:
            plain_token, event_ts = parse.validation(env)
            log.info("event=qq_url_check")
            return web.json_response(self._signer.validation_answer(plain_token, event_ts))
        if env.op != parse.OP_DISPATCH or env.t not in parse.MESSAGE_TYPES:
            log.info("event=qq_ignored op=%d t=%s", env.op, (env.t or "")[:64])
            return web.json_response(ACK)
        if env.id is None:
            raise BadPayload("id: the envelope has no id")
        event = parse.message_event(env, self.name)
        await self.passive.opened(event)
        new = await self._ingress.submit(event)
        released: list[int] = []
        if new:
            released = await self._release_waiting(str(event.chat))
            self._release_again(str(event.chat))
        log.debug(
            "event=qq_in id=%s t=%s new=%s released=%d ms=%.1f",
            env.id,
            env.t,
            new,
            len(released),
            (time.perf_counter() - started) * 1000,
        )
        return web.json_response(ACK)

    # --- out --------------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendResult:
        if request.target.channel != self.name:
            raise SendError(f"not a QQ chat: {request.target}", retryable=False)
        ids = await self._sender.send(request)
        return SendResult(tuple(ids))

    def _release_again(self, chat: str) -> None:
        """Release `chat` once more `release_again_s` after its latest message. A chat writing
        fast gets one such release (an UPDATE) after its last message, not one per message:
        each message releases the chat at once anyway, which covers what was parked before it."""
        self._release_due[chat] = asyncio.get_running_loop().time() + self.release_again_s
        if chat not in self._later:
            self._later[chat] = asyncio.create_task(self._release_later(chat), name="qq-release-again")

    async def _release_later(self, chat: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (due := self._release_due.pop(chat, None)) is not None:
                await asyncio.sleep(max(0.0, due - loop.time()))
                if chat in self._release_due:
                    continue  # another message came meanwhile: wait until after that one
                try:
                    if ids := await self._release_waiting(chat):
                        log.info("event=qq_released_late chat=%s count=%d", chat, len(ids))
                except Exception:
                    log.exception("event=qq_release_failed chat=%s", chat)
        finally:
            self._later.pop(chat, None)

    async def _expire_slots(self) -> None:
        while True:
            try:
                if removed := await self.passive.expire():
                    log.info("event=qq_slots_expired count=%d", removed)
            except Exception:
                log.exception("event=qq_slot_expiry_failed")
            await asyncio.sleep(3600)
