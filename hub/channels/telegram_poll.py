"""Telegram long polling: getUpdates with an offset, run by one process of a cluster.

On PostgreSQL the poller holds a session advisory lock on a dedicated connection; a process
that dies drops the connection and with it the lock, and another process takes over. The
offset moves past an update only after the ingress stored it, so a crash re-reads what was
not stored yet and the inbox drops what was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
from sqlalchemy import text

from hub.backoff import Backoff, BackoffConfig
from hub.channels.telegram_parse import HANDLED_UPDATES, load_update
from hub.storage.db import Database, advisory_lock

log = logging.getLogger("hub.telegram")

BACKOFF = BackoffConfig(base=0.5, cap=30.0, factor=1.6, low=0.9)


def polling_lock_key(bot_id: int) -> int:
    """A stable 64-bit advisory lock key per bot: two bots may poll from one cluster."""
    digest = hashlib.sha256(f"hub:telegram-polling:{bot_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Poller:
    def __init__(
        self,
        bot: Bot,
        take: Callable[[Update], Awaitable[None]],
        db: Database,
        *,
        timeout_s: int = 25,
        lock_retry_s: float = 5.0,
        keepalive_s: float = 10.0,
    ) -> None:
        self._bot = bot
        self._take = take
        self._db = db
        self._timeout = timeout_s
        self._lock_retry = lock_retry_s
        self._keepalive = keepalive_s
        self._backoff = Backoff(BACKOFF)
        self._offset: int | None = None
        self.state = "connecting"

    async def run(self) -> None:
        while True:
            try:
                if self._db.is_sqlite:
                    await self._poll()  # one process per SQLite database: no lock needed
                else:
                    await self._lead_and_poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=telegram_polling_failed")
                self.state = "failing"
                await self._backoff.asleep()

    async def _lead_and_poll(self) -> None:
        key = polling_lock_key(self._bot.id)
        async with self._db.engine.connect() as conn:
            try:
                while not await advisory_lock(conn, key):
                    await conn.commit()
                    self.state = "standby"
                    await asyncio.sleep(self._lock_retry)
                await conn.commit()  # the lock is per session: no transaction stays open
                log.info("event=telegram_polling_leader")
                poll = asyncio.create_task(self._poll(), name="telegram-poll")
                try:
                    while True:
                        done, _ = await asyncio.wait({poll}, timeout=self._keepalive)
                        if done:
                            poll.result()
                            return
                        # A connection that died took the lock with it: stop before another
                        # process starts polling too.
                        await conn.execute(text("SELECT 1"))
                        await conn.commit()
                finally:
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await poll
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    await conn.commit()

    async def _poll(self) -> None:
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
