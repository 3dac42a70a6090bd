"""Per-chat settings, users (bans, admins added from the CLI), the audit log and a small key-value store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, or_, select, update

from hub.storage.db import Database, utcnow
from hub.storage.models import audit, chats, inbox, kv, users

log = logging.getLogger("hub.storage")


@dataclass(frozen=True, slots=True)
class ChatSettings:
    ref: str
    persona: str | None = None
    model: str | None = None
    skills_off: frozenset[str] = field(default_factory=frozenset)
    unreachable: bool = False
    language: str | None = None


class ChatRepo:
    """Per-chat settings, read on every event: cached briefly (another process's change shows
    within `ttl_s`; this process's own changes at once)."""

    def __init__(self, db: Database, ttl_s: float = 2.0, max_cached: int = 10_000) -> None:
        self._db = db
        self._ttl = ttl_s
        self._max = max_cached
        self._cache: dict[str, tuple[float, ChatSettings]] = {}
        # Bumped by every update: a read that overlapped one does not cache what it saw.
        self._updates = 0
        # Misses of many chats at once are read together, in one query (the batch writer's
        # transaction): a query per event costs more than the rest of routing it.
        self._k_get = f"chats.get:{id(self)}"
        db.writer.register_sync(self._k_get, self._get_batch)
        self._select = select(chats).where(chats.c.ref.in_(bindparam("refs", expanding=True)))
        # Chats read again in the background: once an entry is half its TTL old, the event
        # that finds it is routed with it while the next one is read (never older than the TTL).
        self._reloading: dict[str, asyncio.Task[ChatSettings]] = {}

    async def get(self, ref: str) -> ChatSettings:
        hit = self._cache.get(ref)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl:
            if now - hit[0] >= self._ttl / 2 and ref not in self._reloading:
                task = asyncio.get_running_loop().create_task(self._read(ref))
                self._reloading[ref] = task
                task.add_done_callback(lambda t: self._reloaded(ref, t))
            return hit[1]
        return await self._read(ref)

    async def _read(self, ref: str) -> ChatSettings:
        now = time.monotonic()
        updates = self._updates
        found: ChatSettings = await self._db.writer.submit(self._k_get, ref)
        if updates == self._updates:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[ref] = (now, found)
        return found

    def _reloaded(self, ref: str, task: asyncio.Task[ChatSettings]) -> None:
        self._reloading.pop(ref, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The next event past the TTL reads it in the foreground, and sees the error.
            log.warning("event=chat_reload_failed chat=%s error=%r", ref, exc)

    def _get_batch(self, conn: Connection, refs: list[str]) -> Sequence[ChatSettings]:
        rows: dict[str, ChatSettings] = {}
        unique = list(dict.fromkeys(refs))
        for i in range(0, len(unique), 500):
            for r in conn.execute(self._select, {"refs": unique[i : i + 500]}):
                skills_off = frozenset(r.skills_off or ())
                rows[r.ref] = ChatSettings(r.ref, r.persona, r.model, skills_off, bool(r.unreachable), r.language)
        return [rows.get(ref) or ChatSettings(ref) for ref in refs]

    async def update(self, ref: str, **values: Any) -> None:
        """Set columns of a chat's row, creating it first when it does not exist."""
        now = utcnow()
        if "skills_off" in values:
            values["skills_off"] = sorted(values["skills_off"])
        self._cache.pop(ref, None)
        self._updates += 1
        async with self._db.engine.begin() as conn:
            stmt = self._db.insert(chats).values(ref=ref, skills_off=[], created_at=now, updated_at=now)
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=["ref"]))
            await conn.execute(update(chats).where(chats.c.ref == ref).values(updated_at=now, **values))
        self._updates += 1
        self._cache.pop(ref, None)  # again: a read during the write may have cached the old row

    async def set_skill(self, ref: str, skill: str, on: bool) -> None:
        current = set((await self.get(ref)).skills_off)
        (current.discard if on else current.add)(skill)
        await self.update(ref, skills_off=current)

    async def mark_unreachable(self, ref: str, reason: str) -> None:
        await self.update(ref, unreachable=True, unreachable_reason=reason[:500])

    async def mark_reachable(self, ref: str) -> None:
        await self.update(ref, unreachable=False, unreachable_reason=None)

    async def known(self) -> list[str]:
        """Every chat the hub knows: those with settings, and those anyone wrote from (the inbox).

        Chats marked unreachable (the bot was blocked or removed) are left out.
        """
        async with self._db.engine.connect() as conn:
            unreachable = {
                r.ref for r in await conn.execute(select(chats.c.ref).where(chats.c.unreachable.is_(True)))
            }
            refs = {r.ref for r in await conn.execute(select(chats.c.ref))}
            refs |= {r.chat for r in await conn.execute(select(inbox.c.chat).distinct())}
        return sorted(refs - unreachable)


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    name: str = ""
    banned: bool = False
    is_admin: bool = False
    allowed: bool = False


class UserRepo:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._k_standing = f"users.standing:{id(self)}"
        db.writer.register_sync(self._k_standing, self._standing_batch)

    async def get(self, user_id: str) -> UserRecord:
        async with self._db.engine.connect() as conn:
            r = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        if r is None:
            return UserRecord(user_id)
        return UserRecord(r.id, r.name, bool(r.banned), bool(r.is_admin), bool(r.allowed))

    async def set(self, user_id: str, **values: Any) -> None:
        now = utcnow()
        async with self._db.engine.begin() as conn:
            stmt = self._db.insert(users).values(id=user_id, created_at=now, updated_at=now)
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
            await conn.execute(update(users).where(users.c.id == user_id).values(updated_at=now, **values))

    async def admins(self) -> list[str]:
        async with self._db.engine.connect() as conn:
            return [r.id for r in await conn.execute(select(users.c.id).where(users.c.is_admin.is_(True)))]

    async def banned(self) -> frozenset[str]:
        async with self._db.engine.connect() as conn:
            return frozenset(r.id for r in await conn.execute(select(users.c.id).where(users.c.banned.is_(True))))

    async def standing(self) -> tuple[frozenset[str], frozenset[str]]:
        """(admins, banned) in one read, beside the batch writer's writes: the router reads them
        every few seconds while every event waits."""
        result: tuple[frozenset[str], frozenset[str]] = await self._db.writer.submit(self._k_standing, None)
        return result

    def _standing_batch(self, conn: Connection, asks: list[None]) -> Sequence[tuple[frozenset[str], frozenset[str]]]:
        rows = conn.execute(
            select(users.c.id, users.c.is_admin, users.c.banned).where(
                or_(users.c.is_admin.is_(True), users.c.banned.is_(True))
            )
        )
        admins: set[str] = set()
        banned: set[str] = set()
        for r in rows:
            if r.is_admin:
                admins.add(r.id)
            if r.banned:
                banned.add(r.id)
        answer = (frozenset(admins), frozenset(banned))
        return [answer] * len(asks)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    chat: str | None
    action: str
    detail: str
    outcome: str


class AuditRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, actor: str, action: str, outcome: str, *, chat: str | None = None, detail: str = "") -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audit.insert().values(
                    at=utcnow(), actor=actor, chat=chat, action=action, detail=detail[:2000], outcome=outcome
                )
            )

    async def recent(self, n: int = 20) -> Sequence[AuditEntry]:
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(select(audit).order_by(audit.c.id.desc()).limit(n))
            return [AuditEntry(r.id, r.at, r.actor, r.chat, r.action, r.detail, r.outcome) for r in rows]


class KeyValueRepo:
    """Small settings changed at run time (e.g. the default model chosen by an admin)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str, default: Any = None) -> Any:
        async with self._db.engine.connect() as conn:
            r = (await conn.execute(select(kv.c.value).where(kv.c.key == key))).first()
        return default if r is None else r.value

    async def set(self, key: str, value: Any) -> None:
        now = utcnow()
        async with self._db.engine.begin() as conn:
            await conn.execute(delete(kv).where(kv.c.key == key))
            await conn.execute(kv.insert().values(key=key, value=value, updated_at=now))
