"""Who is an admin and who is banned, cached briefly so the router does not query per event."""

from __future__ import annotations

from collections.abc import Iterable

from hub.storage.cached import Cached
from hub.storage.chats import UserRepo


class People:
    def __init__(self, users: UserRepo, config_admins: Iterable[str], ttl_s: float = 3.0) -> None:
        self._users = users
        self._config_admins = frozenset(config_admins)
        # Short TTL: a ban or an admin added by another process takes effect within seconds.
        # One read serves every event that finds the value stale at once.
        self._known: Cached[tuple[frozenset[str], frozenset[str]]] = Cached(self._read, ttl_s)

    async def _read(self) -> tuple[frozenset[str], frozenset[str]]:
        """(the admins the database names, the banned)."""
        return await self._users.standing()

    def invalidate(self) -> None:
        self._known.invalidate()

    async def is_admin(self, user: str) -> bool:
        # A web user is whoever names the session: never an admin by name, even if a row says so
        # (web admin rights come from the web token, see Router).
        if user.startswith("web:"):
            return False
        if user in self._config_admins:
            return True
        return user in (await self._known.get())[0]

    async def is_banned(self, user: str) -> bool:
        return user in (await self._known.get())[1]

    @property
    def config_admins(self) -> frozenset[str]:
        return self._config_admins
