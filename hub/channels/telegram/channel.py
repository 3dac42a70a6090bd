"""The Telegram channel: webhook or long polling in, Bot API calls out, on aiogram 3.

Imported only when `[telegram] enabled`: aiogram is heavy. Parsing lives in telegram_parse,
rendering and the error mapping in telegram_render, edit-streaming in telegram_stream, long
polling in telegram_poll, the cheaper Bot API session in telegram_session.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Update
from aiohttp import web
from pydantic import ValidationError

from hub.backoff import Backoff
from hub.channels.base import Channel, Ingress, LiveStream, SendRequest, SendResult, stop_tasks
from hub.channels.payload import parse_json
from hub.channels.telegram.members import GroupAdmins
from hub.channels.telegram.parse import (
    CHANNEL,
    HANDLED_UPDATES,
    BotIdentity,
    check_ids,
    is_id,
    load_update,
    parse_plain,
    parse_update,
)
from hub.channels.telegram.poll import BACKOFF, Poller
from hub.channels.telegram.render import (
    TelegramSender,
    chat_id_of,
    limits_for,
    plan,
    reply_of,
    send_error,
)
from hub.channels.telegram.session import JsonSession
from hub.channels.telegram.stream import TelegramLiveStream
from hub.errors import BadPayload, ConfigError, HubError, SendError, VerificationFailed
from hub.events import ChatRef, Event
from hub.fetch import Fetcher, FetchError, FetchTooLarge
from hub.i18n.language import ChatLanguages
from hub.settings import TelegramSettings
from hub.storage.chats import ChatRepo
from hub.storage.db import Database
from hub.storage.media import MediaStore, MediaTooLarge, StoredMedia

log = logging.getLogger("hub.telegram")

DEFAULT_API = "https://api.telegram.org"
WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
START_TIMEOUT_S = 5.0
EDIT_INTERVAL_S = {"private": 1.0, "group": 3.0}
GET_FILE_MAX = 20 * 1024 * 1024


def make_bot(settings: TelegramSettings) -> Bot:
    """A Bot whose aiohttp session talks to `api_base` (a local Bot API server, a test fake)."""
    if settings.token is None:
        raise ConfigError([("telegram.token", "required")])
    api = TelegramAPIServer.from_base(settings.api_base or DEFAULT_API)
    return Bot(settings.token.get_secret_value(), session=JsonSession(api=api))


def webhook_url(base: str) -> str:
    return base.rstrip("/") + WEBHOOK_PATH


class TelegramChannel(Channel):
    name = CHANNEL

    def __init__(
        self,
        settings: TelegramSettings,
        *,
        ingress: Ingress,
        media: MediaStore,
        chats: ChatRepo,
        db: Database,
        public_url: str | None,
        fetcher: Fetcher,
        languages: ChatLanguages | None = None,
    ) -> None:
        self._settings = settings
        self._ingress = ingress
        self._media = media
        self._chats = chats
        self._public_url = public_url
        self._fetcher = fetcher
        self.bot = make_bot(settings)
        self.limits = limits_for(settings.upload_limit_mb)
        self._me = BotIdentity(self.bot.id)
        self._secret = settings.secret_token.get_secret_value().encode() if settings.secret_token else None
        self._sender = TelegramSender(
            self.bot,
            media,
            upload_limit_mb=settings.upload_limit_mb,
            public_url=public_url,
            fetcher=fetcher,
            languages=languages,
        )
        self._group_admins = GroupAdmins(self.bot)
        self._poller = Poller(self.bot, self._take, db) if settings.mode == "polling" else None
        # Groups that became supergroups, old chat id → new; also recorded on the chat's row.
        self._migrated: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._actions: set[asyncio.Task[None]] = set()
        self._closed = False
        self._state = "connecting"

    # --- lifecycle ------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post(WEBHOOK_PATH, self.webhook)] if self._settings.mode == "webhook" else []

    async def start(self) -> None:
        self._closed = False
        if not await self._learn_me():
            self._tasks.append(asyncio.create_task(self._learn_me_later(), name="telegram-getme"))
        if self._poller is not None:
            self._tasks.append(asyncio.create_task(self._poller.run(), name="telegram-polling"))
        elif self._public_url:
            await self._register_webhook()

    async def stop(self) -> None:
        """Stop taking input (polling); sends go on until `close`, while the outbox drains."""
        await stop_tasks(self._tasks)

    async def close(self) -> None:
        self._closed = True
        self._group_admins.close()
        await self.bot.session.close()

    async def _learn_me(self) -> bool:
        try:
            me = await asyncio.wait_for(self.bot.get_me(), timeout=START_TIMEOUT_S)
        except Exception as exc:
            log.warning("event=telegram_getme_failed error=%s", send_error(exc))
            return False
        self._me = BotIdentity(me.id, me.username)
        self._state = "running"
        log.info("event=telegram_ready bot=%s mode=%s", me.username, self._settings.mode)
        return True

    async def _learn_me_later(self) -> None:
        backoff = Backoff(BACKOFF)
        while not await self._learn_me():
            self._state = "failing"
            await backoff.asleep()

    async def _register_webhook(self) -> None:
        assert self._public_url is not None and self._secret is not None
        url = webhook_url(self._public_url)
        try:
            await asyncio.wait_for(
                self.bot.set_webhook(
                    url=url, secret_token=self._secret.decode(), allowed_updates=list(HANDLED_UPDATES)
                ),
                timeout=START_TIMEOUT_S,
            )
        except Exception as exc:
            # The hub still serves; Telegram keeps any webhook registered before.
            log.warning("event=telegram_set_webhook_failed url=%s error=%s", url, send_error(exc))
        else:
            log.info("event=telegram_webhook_set url=%s", url)

    @property
    def bot_names(self) -> Sequence[str]:
        return (self._me.username,) if self._me.username else ()

    def status(self) -> str:
        if self._poller is not None and self._state == "running":
            return self._poller.state
        return self._state

    # --- inbound --------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            raise VerificationFailed(f"missing {SECRET_HEADER}", 401)
        # Header bytes that are not UTF-8 arrive as surrogates: encoding them must not fail, so
        # that any header that is not the secret is a wrong one (403), compared in constant time.
        if self._secret is None or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._secret):
            raise VerificationFailed(f"wrong {SECRET_HEADER}", 403)
        data = parse_json(await request.read())
        if not isinstance(data, dict) or not is_id(data.get("update_id")):
            raise BadPayload("not a Telegram update (no update_id)")
        plain = parse_plain(data, self._me)
        if plain is None:
            log.debug("event=telegram_ignored update_id=%d", data["update_id"])
            return web.Response(status=200)
        if isinstance(plain, Event):
            await self._ingress.submit(plain)
            return web.Response(status=200)
        try:
            update = load_update(data)
        except ValidationError as exc:
            raise BadPayload(f"not a Telegram update ({exc.error_count()} problems)") from exc
        if update is not None:
            check_ids(update)
            await self._take(update)
        return web.Response(status=200)

    async def _take(self, update: Update) -> None:
        """Store one update's event in the inbox (raises only when it could not be stored)."""
        msg = update.message
        if msg is not None and msg.migrate_to_chat_id:
            await self._record_migration(str(msg.chat.id), msg.migrate_to_chat_id)
        try:
            event = parse_update(update, self._me)
        except BadPayload as exc:
            log.warning("event=telegram_update_refused update_id=%d reason=%s", update.update_id, exc)
            return
        except Exception:
            # A shape this version does not expect: skip it rather than retry it forever.
            log.exception("event=telegram_parse_failed update_id=%d", update.update_id)
            return
        if event is None:
            log.debug("event=telegram_ignored update_id=%d", update.update_id)
            return
        await self._ingress.submit(event)

    async def _record_migration(self, old_chat_id: str, new_chat_id: int) -> None:
        if self._migrated.get(old_chat_id) == new_chat_id:
            return
        self._migrated[old_chat_id] = new_chat_id
        old, new = ChatRef(CHANNEL, "group", old_chat_id), ChatRef(CHANNEL, "group", str(new_chat_id))
        log.info("event=telegram_chat_migrated old=%s new=%s", old, new)
        try:
            await self._chats.update(str(old), migrated_to=str(new))
        except Exception:
            log.exception("event=telegram_migration_record_failed old=%s", old)

    async def is_group_admin(self, event: Event) -> bool:
        return await self._group_admins.is_admin(event)

    # --- outbound -------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendResult:
        if self._closed:
            raise SendError("the Telegram channel is closed", retryable=True, retry_after=5.0)
        parts = plan(request.message)
        if not parts:
            return SendResult()
        target = request.target

        async def migrated(new_chat_id: int) -> None:
            await self._record_migration(target.chat_id, new_chat_id)

        try:
            ids = await self._sender.to(request).send_parts(
                self._chat_id(target), parts, request, reply_of(target, request.quote, request.context), migrated
            )
        except Exception as exc:
            raise send_error(exc) from exc
        return SendResult(tuple(ids))

    def _chat_id(self, target: ChatRef) -> int | str:
        return self._migrated.get(target.chat_id) or chat_id_of(target)

    async def open_stream(
        self, target: ChatRef, *, quote: str | None = None, context: Mapping[str, object] | None = None
    ) -> LiveStream | None:
        if self._closed:
            return None
        if target.chat_id in self._migrated:
            target = ChatRef(CHANNEL, target.kind, str(self._migrated[target.chat_id]), target.thread_id)
        return TelegramLiveStream(
            self.bot, target, reply_of(target, quote, context), interval_s=EDIT_INTERVAL_S[target.kind]
        )

    async def action(self, target: ChatRef, kind: str = "typing") -> None:
        if self._closed:
            return
        # Callers cancel "typing" when the answer starts; cancelling the request half-way
        # would cost its kept-alive connection, so it finishes on its own.
        task = asyncio.ensure_future(self._sender.action(target, kind))
        self._actions.add(task)
        task.add_done_callback(self._action_done)
        await asyncio.shield(task)

    def _action_done(self, task: asyncio.Task[None]) -> None:
        self._actions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("event=telegram_action_failed error=%r", task.exception())

    async def fetch_media(
        self, file_id: str, *, name: str | None = None, mime: str | None = None, max_bytes: int | None = None
    ) -> StoredMedia:
        """Download a file a user sent (by its file_id) into the media store."""
        try:
            file = await self.bot.get_file(file_id)
        except Exception as exc:
            raise send_error(exc) from exc
        if not file.file_path:
            raise HubError("Telegram gives no download for this file (too large for getFile)")
        limit = max_bytes or max(GET_FILE_MAX, self._sender.upload_limit)
        url = self.bot.session.api.file_url(self.bot.token, file.file_path)
        try:
            # Through the one bounded download, whose errors never carry the URL (it holds the token).
            async with self._fetcher.open(url, max_bytes=limit, timeout_s=300) as download:
                return await self._media.save_stream(download.chunks(), max_bytes=limit, name=name, mime=mime)
        except FetchTooLarge:
            raise MediaTooLarge(limit) from None
        except FetchError as exc:
            raise send_error(exc) from None


# --- `hub telegram set-webhook | delete-webhook` ----------------------------------------------


async def _with_bot(settings: TelegramSettings, call: Callable[[Bot], Awaitable[None]]) -> None:
    bot = make_bot(settings)
    try:
        await call(bot)
    except Exception as exc:
        raise send_error(exc) from exc
    finally:
        await bot.session.close()


async def set_webhook(settings: TelegramSettings, base_url: str) -> str:
    """Register `<base_url>/webhooks/telegram` with the secret token and the handled update types."""
    if settings.secret_token is None:
        raise ConfigError([("telegram.secret_token", "required to register a webhook")])
    url = webhook_url(base_url)
    secret = settings.secret_token.get_secret_value()

    async def call(bot: Bot) -> None:
        await bot.set_webhook(url=url, secret_token=secret, allowed_updates=list(HANDLED_UPDATES))

    await _with_bot(settings, call)
    return url


async def delete_webhook(settings: TelegramSettings) -> None:
    async def call(bot: Bot) -> None:
        await bot.delete_webhook()

    await _with_bot(settings, call)
