"""Telegram long polling: getUpdates with an offset, run by one process of a cluster.

Only the leader polls (storage/leader.py: an advisory lock on PostgreSQL); a process that dies
drops the lock, and another process takes over. The
offset moves past an update only after the ingress stored it, so a crash re-reads what was
not stored yet and the inbox drops what was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Bot
from aiogram.exceptions import (
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.methods import TelegramMethod
from aiogram.types import Update
from pydantic import ValidationError

from hub.backoff import Backoff, BackoffConfig
from hub.channels.telegram.parse import HANDLED_UPDATES, load_update
from hub.storage.db import Database
from hub.storage.leader import LeaderLoop

log = logging.getLogger("hub.telegram")

BACKOFF = BackoffConfig(base=0.5, cap=30.0)
POLL_TIMEOUT_S = 25


class Poller(LeaderLoop):
    def __init__(self, bot: Bot, take: Callable[[Update], Awaitable[None]], db: Database) -> None:
        super().__init__(db, f"telegram-polling:{bot.id}", BACKOFF)
        self._bot = bot
        self._take = take
        self._timeout = POLL_TIMEOUT_S
        self._offset: int | None = None

    def failed(self, exc: Exception) -> None:
        log.exception("event=telegram_polling_failed")

    async def lead(self) -> None:
        while True:
            try:
                updates = await self._bot(
                    RawGetUpdates(offset=self._offset, timeout=self._timeout, allowed_updates=list(HANDLED_UPDATES)),
                    request_timeout=self._timeout + 15,
                )
            except asyncio.CancelledError:
                raise
            except TelegramRetryAfter as exc:
                self.state = "failing"
                await asyncio.sleep(exc.retry_after)
                continue
            except TelegramConflictError as exc:
                # A webhook is set, or another program polls with this token.
                self.state = "failing"
                log.warning(
                    "event=telegram_polling_conflict hint=%s reason=%s",
                    "run `hub telegram delete-webhook`, or stop the other poller",
                    exc.message.splitlines()[0],
                )
                await self._backoff.asleep()
                continue
            except TelegramUnauthorizedError:
                self.state = "failing"
                log.error("event=telegram_token_refused")
                await asyncio.sleep(60)
                continue
            except Exception as exc:  # Telegram down, network gone, garbled answer: try again
                self.state = "failing"
                log.warning("event=telegram_polling_error error=%r", exc)
                await self._backoff.asleep()
                continue
            self._backoff.reset()
            self.state = "running"
            for raw in updates:
                update_id = raw.get("update_id")
                if not isinstance(update_id, int):
                    continue
                try:
                    update = load_update(raw)
                except ValidationError as exc:
                    problems = exc.error_count()
                    log.warning("event=telegram_update_unreadable update_id=%d problems=%d", update_id, problems)
                    update = None
                if update is not None:
                    await self._store(update)
                self._offset = update_id + 1

    async def _store(self, update: Update) -> None:
        """Hand the update to the ingress; keep trying until it is stored (never skip one)."""
        backoff = Backoff(BACKOFF)
        while True:
            try:
                await self._take(update)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away, or the hub is not accepting yet
                log.warning("event=telegram_update_store_failed update_id=%d error=%r", update.update_id, exc)
                await backoff.asleep()


class RawGetUpdates(TelegramMethod[list[dict[str, Any]]]):
    """getUpdates answered as plain dicts: each update is validated on its own (load_update),
    so one update this aiogram version cannot read does not stall the whole queue."""

    __returning__ = list[dict[str, Any]]
    __api_method__ = "getUpdates"

    offset: int | None = None
    limit: int | None = None
    timeout: int | None = None
    allowed_updates: list[str] | None = None
