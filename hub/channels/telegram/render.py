"""Outbound Telegram: a Message becomes Bot API calls (text split at 4,096, media uploaded or
linked), and the one mapping of Bot API failures to SendError."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import mimetypes
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiogram import Bot
from aiogram.exceptions import (
    AiogramError,
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BufferedInputFile, FSInputFile, InputFile, ReplyParameters
from aiogram.types import Message as TgMessage

from hub.channels.base import ChannelLimits, SendRequest, split_text
from hub.channels.parts import MediaLinks, send_parts
from hub.channels.telegram.session import JsonSession
from hub.errors import SendError
from hub.events import Audio, ChatRef, File, Image, Media, Message, Video
from hub.fetch import Fetcher, FetchError, FetchTooLarge
from hub.i18n.language import ChatLanguages
from hub.storage.media import MediaStore, MediaTooLarge

log = logging.getLogger("hub.telegram")

MB = 1024 * 1024
TEXT_MAX = 4096
CAPTION_MAX = 1024
PHOTO_MAX = 10 * MB  # larger photos go as documents
UPLOAD_TIMEOUT_S = 300
# Telegram's own words when it could not fetch a URL we gave it: then we upload it ourselves.
_URL_REFUSED = ("http url", "url content", "wrong file identifier", "wrong type of the web page", "failed to get")
_ACTIONS = {
    "typing": "typing",
    "image": "upload_photo",
    "upload_photo": "upload_photo",
    "video": "upload_video",
    "upload_video": "upload_video",
    "record_video": "record_video",
    "audio": "upload_voice",
    "upload_voice": "upload_voice",
    "record_voice": "record_voice",
    "file": "upload_document",
    "upload_document": "upload_document",
}


def limits_for(upload_limit_mb: int) -> ChannelLimits:
    upload = upload_limit_mb * MB
    return ChannelLimits(
        text_max=TEXT_MAX,
        text_unit="utf16",
        caption_max=CAPTION_MAX,
        media_max={"image": min(PHOTO_MAX, upload), "video": upload, "audio": upload, "file": upload},
        can_edit=True,
        can_quote=True,
    )


# --- errors: the one place Bot API failures become SendError ----------------------------------


def send_error(exc: BaseException) -> SendError:
    """What the outbox should do about a failed Bot API call."""
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, FetchError):
        # A media URL the hub could not (or would not: a private address) download.
        return SendError(f"media download: {exc}", retryable=exc.retryable)
    reason = f"{type(exc).__name__}: {_first_line(exc)}"
    if isinstance(exc, TelegramRetryAfter):
        return SendError(reason, retryable=True, retry_after=float(exc.retry_after))
    if isinstance(exc, TelegramMigrateToChat | TelegramForbiddenError):
        # Blocked by the user, kicked from the group, the group became a supergroup: no retry helps.
        return SendError(reason, retryable=False, final_for_chat=True)
    if isinstance(exc, TelegramBadRequest):
        return SendError(reason, retryable=False, final_for_chat="chat not found" in exc.message.lower())
    if isinstance(exc, TelegramUnauthorizedError):
        # The token was refused: nothing changes until someone fixes the configuration.
        return SendError(reason, retryable=True, retry_after=300.0)
    if isinstance(exc, TelegramEntityTooLarge | TelegramNotFound):
        return SendError(reason, retryable=False)
    if isinstance(exc, TelegramServerError | TelegramNetworkError | TelegramConflictError | ClientDecodeError):
        return SendError(reason, retryable=True)
    if isinstance(exc, TelegramAPIError | AiogramError):
        return SendError(reason, retryable=True)
    if isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError):
        return SendError(reason, retryable=True)
    if isinstance(exc, OSError):
        return SendError(reason, retryable=False)  # a local file that is not there will not appear
    return SendError(reason, retryable=True)


def _first_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, TelegramAPIError) else str(exc)
    return text.strip().splitlines()[0][:300] if text.strip() else ""


# --- planning: a Message as an ordered list of Bot API calls ---------------------------------


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class MediaPart:
    media: Media
    caption: str | None = None


Part = TextPart | MediaPart


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_message_text(text: str, limit: int = TEXT_MAX) -> list[str]:
    """Split at `limit` as Telegram counts it (UTF-16 code units)."""
    if len(text) * 2 <= limit:  # fits, whatever its characters (at most two units each)
        return [text] if text.strip() else []
    return [p for p in split_text(text, limit, "utf16") if p.strip()]


def plan(message: Message) -> list[Part]:
    """The calls that send `message`, in order: media first, then the text.

    The plan depends on the message alone, so a retry skips exactly the parts already sent.
    """
    text = message.text
    media = message.media
    parts: list[Part] = []
    if len(media) == 1 and text and not media[0].caption and utf16_len(text) <= CAPTION_MAX:
        return [MediaPart(media[0], text)]
    for seg in media:
        caption = seg.caption or None
        if caption is not None and utf16_len(caption) > CAPTION_MAX:
            parts.append(MediaPart(seg))
            parts.extend(TextPart(t) for t in split_message_text(caption))
        else:
            parts.append(MediaPart(seg, caption))
    if text:
        parts.extend(TextPart(t) for t in split_message_text(text))
    return parts


# --- sending ---------------------------------------------------------------------------------


def chat_id_of(target: ChatRef) -> int | str:
    try:
        return int(target.chat_id)
    except ValueError:
        return target.chat_id  # @channelusername


def thread_of(target: ChatRef) -> int | None:
    return int(target.thread_id) if target.thread_id and target.thread_id.isdigit() else None


def reply_of(target: ChatRef, quote: str | None, context: Mapping[str, object] | None) -> ReplyParameters | None:
    """In groups the reply quotes the message it answers (private chats need no quote)."""
    if quote is None or target.kind != "group" or not context:
        return None
    message_id = context.get("message_id")
    if not isinstance(message_id, int):
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


class TelegramSender:
    """Sends plans through one Bot; media too large for the upload limit goes as a link."""

    def __init__(
        self,
        bot: Bot,
        media: MediaStore,
        *,
        upload_limit_mb: int,
        public_url: str | None,
        fetcher: Fetcher,
        languages: ChatLanguages | None = None,
    ) -> None:
        self.bot = bot
        self._media = media
        self._fetcher = fetcher
        self.upload_limit = upload_limit_mb * MB
        self._links = MediaLinks(media, public_url or None, languages=languages)
        self._request: SendRequest | None = None

    def to(self, request: SendRequest) -> TelegramSender:
        """This sender for one message: a note sent instead of a media is in that chat's language."""
        # A shallow copy by hand: copy.copy's protocol lookups cost more than the send's own code.
        bound = object.__new__(TelegramSender)
        bound.__dict__.update(self.__dict__)
        bound._request = request
        return bound

    async def send_parts(
        self,
        chat_id: int | str,
        parts: list[Part],
        request: SendRequest,
        reply: ReplyParameters | None,
        on_migrate: Callable[[int], Awaitable[None]],
    ) -> list[str]:
        thread = thread_of(request.target)

        async def send_one(n: int, part: Part) -> str:
            nonlocal chat_id
            try:
                sent = await self._send_part(chat_id, thread, part, reply if n == 0 else None)
            except TelegramMigrateToChat as exc:
                # The group became a supergroup: record it and send there instead, once.
                await on_migrate(exc.migrate_to_chat_id)
                chat_id = exc.migrate_to_chat_id
                sent = await self._send_part(chat_id, thread, part, reply if n == 0 else None)
            return str(sent)

        return await send_parts(parts, request, send_one)

    async def _send_part(
        self, chat_id: int | str, thread: int | None, part: Part, reply: ReplyParameters | None
    ) -> int:
        """One call; the message id Telegram gave it."""
        if isinstance(part, TextPart):
            session = self.bot.session
            if isinstance(session, JsonSession):
                return await session.send_text(self.bot, chat_id, part.text, thread, reply)
            sent = await self.bot.send_message(
                chat_id=chat_id, text=part.text, message_thread_id=thread, reply_parameters=reply
            )
            return sent.message_id
        return (await self._send_media(chat_id, thread, part.media, part.caption, reply)).message_id

    async def _send_media(
        self, chat_id: int | str, thread: int | None, seg: Media, caption: str | None, reply: ReplyParameters | None
    ) -> TgMessage:
        common: dict[str, Any] = {"chat_id": chat_id, "message_thread_id": thread, "reply_parameters": reply}
        if seg.file_id:
            # Already on Telegram: send by id, nothing to upload.
            return await self._call_media(_method_for(seg), seg.file_id, caption, common)
        if seg.data is None and seg.path is None and seg.url:
            try:
                return await self._call_media(_method_for(seg), seg.url, caption, common)
            except TelegramBadRequest as exc:
                if not any(s in exc.message.lower() for s in _URL_REFUSED):
                    raise
                log.info("event=telegram_url_refused url_host=%s reason=%s", _host(seg.url), _first_line(exc))
            return await self._upload_from_url(common, seg, caption)
        size = len(seg.data) if seg.data is not None else (await asyncio.to_thread(os.stat, str(seg.path))).st_size
        if size > self.upload_limit:
            return await self._send_link(common, seg, caption, size)
        method = _method_for(seg)
        if isinstance(seg, Image) and size > PHOTO_MAX:
            method = "document"
        name = _filename(seg)
        upload: InputFile
        if seg.data is not None:
            upload = BufferedInputFile(seg.data, filename=name)
        else:
            upload = FSInputFile(str(seg.path), filename=name)
        try:
            return await self._call_media(method, upload, caption, {**common, "request_timeout": UPLOAD_TIMEOUT_S})
        except TelegramEntityTooLarge:
            # The server's limit is lower than configured: a link still gets the file there.
            return await self._send_link(common, seg, caption, size)

    async def _upload_from_url(self, common: dict[str, Any], seg: Media, caption: str | None) -> TgMessage:
        assert seg.url is not None
        try:
            # The one guarded download: a URL leading to a private address is refused here.
            async with self._fetcher.open(seg.url, max_bytes=self.upload_limit, timeout_s=UPLOAD_TIMEOUT_S) as download:
                stored = await self._media.save_stream(
                    download.chunks(), max_bytes=self.upload_limit, name=seg.name, mime=seg.mime, kind=seg.kind
                )
        except (MediaTooLarge, FetchTooLarge):
            return await self._send_link(common, seg, caption, None, url=seg.url)
        local = _replace_source(seg, str(stored.path))
        return await self._send_media(
            common["chat_id"], common["message_thread_id"], local, caption, common["reply_parameters"]
        )

    async def _call_media(
        self, method: str, source: str | InputFile, caption: str | None, common: dict[str, Any]
    ) -> TgMessage:
        kwargs = {**common, "caption": caption}
        if method == "photo":
            return await self.bot.send_photo(photo=source, **kwargs)
        if method == "video":
            return await self.bot.send_video(video=source, **kwargs)
        if method == "voice":
            return await self.bot.send_voice(voice=source, **kwargs)
        if method == "audio":
            return await self.bot.send_audio(audio=source, **kwargs)
        return await self.bot.send_document(document=source, **kwargs)

    async def _send_link(
        self, common: dict[str, Any], seg: Media, caption: str | None, size: int | None, *, url: str | None = None
    ) -> TgMessage:
        link = url or await self._links.link(seg)
        note = await self._links.note(self._request, seg.kind, link, size=size)
        text = f"{caption}\n{note}" if caption else note
        return await self.bot.send_message(text=text[:TEXT_MAX], **common)

    async def action(self, target: ChatRef, kind: str) -> None:
        try:
            await self.bot.send_chat_action(
                chat_id=chat_id_of(target), action=_ACTIONS.get(kind, "typing"), message_thread_id=thread_of(target)
            )
        except Exception as exc:
            raise send_error(exc) from exc


def _method_for(seg: Media) -> str:
    if isinstance(seg, Image):
        return "photo"
    if isinstance(seg, Video):
        return "video"
    if isinstance(seg, Audio):
        return "voice" if seg.voice else "audio"
    assert isinstance(seg, File)
    return "document"


def _filename(seg: Media) -> str:
    if seg.name:
        return seg.name
    if seg.path:
        return Path(seg.path).name
    ext = (mimetypes.guess_extension(seg.mime) if seg.mime else None) or {
        "image": ".jpg",
        "video": ".mp4",
        "audio": ".mp3",
    }.get(seg.kind, ".bin")
    return f"{seg.kind}{ext}"


def _replace_source(seg: Media, path: str) -> Media:
    return dataclasses.replace(seg, url=None, path=path, data=None)


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]
