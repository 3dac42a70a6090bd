"""Who is an admin and who is banned, cached briefly so the router does not query per event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from hub.storage.chats import UserRepo


class People:
    def __init__(self, users: UserRepo, config_admins: Iterable[str], ttl_s: float = 3.0) -> None:
        self._users = users
        self._config_admins = frozenset(config_admins)
        self._ttl = ttl_s
        self._loaded_at = -1e9
        self._db_admins: set[str] = set()
        self._banned: frozenset[str] = frozenset()
        self._loading = asyncio.Lock()

    async def _refresh(self) -> None:
        # Short TTL: a ban or an admin added by another process takes effect within seconds.
        if time.monotonic() - self._loaded_at < self._ttl:
            return
        async with self._loading:
            # One query for all the events that found the cache stale at once, not one each.
            if time.monotonic() - self._loaded_at < self._ttl:
                return
            admins, self._banned = await self._users.standing()
            self._db_admins = set(admins)
            self._loaded_at = time.monotonic()

    def invalidate(self) -> None:
        self._loaded_at = -1e9

    async def is_admin(self, user: str) -> bool:
        # A web user is whoever names the session: never an admin by name, even if a row says so
        # (web admin rights come from the web token, see Router).
        if user.startswith("web:"):
            return False
        if user in self._config_admins:
            return True
        await self._refresh()
        return user in self._db_admins

    async def is_banned(self, user: str) -> bool:
        await self._refresh()
        return user in self._banned

    @property
    def config_admins(self) -> frozenset[str]:
        return self._config_admins
