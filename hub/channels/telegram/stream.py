"""A Telegram reply that grows in place: one sendMessage, then editMessageText at the chat's
edit rate, and the final text (split at 4,096 where it must) on finish."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest, TelegramRetryAfter
from aiogram.types import Message as TgMessage
from aiogram.types import ReplyParameters

from hub.channels.base import EditPace, SendResult
from hub.channels.telegram.render import TEXT_MAX, chat_id_of, send_error, split_message_text, thread_of, utf16_len
from hub.events import ChatRef


class TelegramLiveStream:
    """sendMessage once, then editMessageText at most once per `interval_s`; final text on finish.

    The first message waits `first_after_s` from the first text: an answer complete by then
    goes out as one plain message, with no edits at all.
    """

    def __init__(
        self,
        bot: Bot,
        target: ChatRef,
        reply: ReplyParameters | None,
        *,
        interval_s: float,
        first_after_s: float = 1.0,
        max_wait_s: float = 30.0,
    ) -> None:
        self._bot = bot
        self._chat_id = chat_id_of(target)
        self._thread = thread_of(target)
        self._reply = reply
        self._pace = EditPace(interval_s, first_after_s)
        self._max_wait = max_wait_s
        self._message_id: int | None = None

    async def update(self, text: str) -> None:
        shown = self._pace.take(text, _clip)
        if shown is None:
            return
        try:
            await self._show(shown)
        except TelegramRetryAfter as exc:
            self._pace.hold(exc.retry_after)
        except Exception as exc:
            raise send_error(exc) from exc

    async def finish(self, text: str) -> SendResult:
        parts = split_message_text(text) or [text]
        ids: list[str] = []
        try:
            await self._with_patience(self._show, parts[0], True)
            ids.append(str(self._message_id))
            for part in parts[1:]:
                sent: TgMessage = await self._with_patience(self._send_more, part)
                ids.append(str(sent.message_id))
        except Exception as exc:
            raise send_error(exc) from exc
        return SendResult(tuple(ids))

    async def _send_more(self, text: str) -> TgMessage:
        return await self._bot.send_message(chat_id=self._chat_id, text=text, message_thread_id=self._thread)

    async def _show(self, text: str, final: bool = False) -> None:
        if self._message_id is None:
            sent = await self._bot.send_message(
                chat_id=self._chat_id, text=text, message_thread_id=self._thread, reply_parameters=self._reply
            )
            self._message_id = sent.message_id
        elif text != self._pace.shown:
            if final:
                await self._pace.wait()  # the chat's edit rate holds for the last edit too
            try:
                await self._bot.edit_message_text(text=text, chat_id=self._chat_id, message_id=self._message_id)
            except TelegramBadRequest as exc:
                if "not modified" not in exc.message.lower():
                    raise
        self._pace.showed(text)

    async def _with_patience(self, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """The final text must get out: wait out a short flood limit, a few times."""
        for _ in range(3):
            try:
                return await call(*args)
            except TelegramRetryAfter as exc:
                if exc.retry_after > self._max_wait:
                    raise
                await asyncio.sleep(exc.retry_after)
        return await call(*args)


def _clip(text: str) -> str:
    if utf16_len(text) <= TEXT_MAX:
        return text
    return split_message_text(text)[0]
