"""Quota overrides, daily usage, pairing codes, and the few read-only queries behind /admin."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from hub.storage.cached import Cached
from hub.storage.db import Database, utcnow
from hub.storage.models import pairing, quotas, usage

# What a pairing code is made of: no 0/O or 1/I/L, so it survives being read aloud or retyped.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 6
# The quota subject that stands for "everyone without an override of their own".
DEFAULT_SUBJECT = "default"


@dataclass(frozen=True, slots=True)
class QuotaOverride:
    subject: str
    skill: str
    per_day: int


class QuotaRepo:
    """Per-day limits set by /admin: for one user, or for `default` (everyone else).

    Read on every counted message, so the (small) table is kept in memory for `ttl_s`: a
    change made in this process shows at once, one made by another process within `ttl_s`.
    """

    def __init__(self, db: Database, ttl_s: float = 3.0) -> None:
        self._db = db
        self._cache: Cached[dict[tuple[str, str], int]] = Cached(self._read, ttl_s)
        # Read beside the batch writer's writes, not on a pooled connection of its own.
        self._k_table = f"quotas.table:{id(self)}"
        db.writer.register_sync(self._k_table, self._table_batch)

    async def set(self, subject: str, skill: str, per_day: int | None) -> None:
        """Set a limit; `None` removes the override (the configured default applies again)."""
        async with self._db.engine.begin() as conn:
            await conn.execute(delete(quotas).where(quotas.c.subject == subject, quotas.c.skill == skill))
            if per_day is not None:
                await conn.execute(quotas.insert().values(subject=subject, skill=skill, per_day=per_day))
        self._cache.invalidate()

    async def _table(self) -> dict[tuple[str, str], int]:
        return await self._cache.get()

    async def _read(self) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = await self._db.writer.submit(self._k_table, None)
        return found

    def _table_batch(self, conn: Connection, asks: list[None]) -> Sequence[dict[tuple[str, str], int]]:
        found = {(r.subject, r.skill): int(r.per_day) for r in conn.execute(select(quotas))}
        return [found] * len(asks)

    async def lookup(self, user: str, skill: str) -> tuple[int | None, int | None]:
        """The user's own override and the `default` override for one skill (None: not set)."""
        table = await self._table()
        return table.get((user, skill)), table.get((DEFAULT_SUBJECT, skill))

    async def all(self) -> list[QuotaOverride]:
        return [QuotaOverride(s, k, n) for (s, k), n in sorted((await self._table()).items())]


Take = tuple[str, str, str, int | None]


class UsageRepo:
    """Uses per user, per skill, per UTC day (`day` is `YYYY-MM-DD`).

    Counted on every message a skill handles, so the writes go through the batching writer:
    one commit serves every message that arrived meanwhile.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._k_take = f"usage.take:{id(self)}"
        self._k_back = f"usage.back:{id(self)}"
        db.writer.register_sync(self._k_take, self._take_batch)
        db.writer.register_sync(self._k_back, self._back_batch)
        # One upsert: a first use inserts 1; a later one adds 1 while under the limit.
        insert = db.insert(usage).values(user=bindparam("u"), skill=bindparam("s"), day=bindparam("d"), count=1)
        self._take_any, self._take_under = (
            insert.on_conflict_do_update(
                index_elements=["user", "skill", "day"],
                set_={"count": usage.c.count + 1},
                where=where,
            ).returning(usage.c.count)
            for where in (None, usage.c.count < bindparam("limit"))
        )
        self._back = (
            update(usage)
            .where(
                usage.c.user == bindparam("u"),
                usage.c.skill == bindparam("s"),
                usage.c.day == bindparam("d"),
                usage.c.count > 0,
            )
            .values(count=usage.c.count - 1)
        )

    async def take(self, user: str, skill: str, day: str, limit: int | None) -> int | None:
        """Count one use if the user is under `limit` (None: no limit); the new count, or None
        when at the limit.

        A conditional UPDATE, so two processes (or two chats of one user) cannot both take the
        last use.
        """
        result: int | None = await self._db.writer.submit(self._k_take, (user, skill, day, limit))
        return result

    def _take_batch(self, conn: Connection, items: list[Take]) -> Sequence[int | None]:
        out: list[int | None] = [None] * len(items)
        # In key order, so that two processes' batches lock shared rows in the same order.
        for i in sorted(range(len(items)), key=lambda i: items[i][:3]):
            user, skill, day, limit = items[i]
            if limit is not None and limit <= 0:
                continue
            params = {"u": user, "s": skill, "d": day, "limit": limit}
            row = conn.execute(self._take_any if limit is None else self._take_under, params).first()
            out[i] = None if row is None else int(row[0])
        return out

    async def give_back(self, user: str, skill: str, day: str) -> None:
        """Undo one `take` (the skill failed before doing anything the user could use)."""
        await self._db.writer.submit(self._k_back, (user, skill, day))

    def _back_batch(self, conn: Connection, items: list[tuple[str, str, str]]) -> Sequence[None]:
        for user, skill, day in sorted(items):
            conn.execute(self._back, {"u": user, "s": skill, "d": day})
        return [None] * len(items)

    async def forget_before(self, day: str) -> int:
        """Drop the counts of days before `day`; how many rows went."""
        async with self._db.engine.begin() as conn:
            return int((await conn.execute(delete(usage).where(usage.c.day < day))).rowcount or 0)

    async def count(self, user: str, skill: str, day: str) -> int:
        async with self._db.engine.connect() as conn:
            q = select(usage.c.count).where(usage.c.user == user, usage.c.skill == skill, usage.c.day == day)
            return int((await conn.execute(q)).scalar() or 0)

    async def for_user(self, user: str, since_day: str) -> list[tuple[str, str, int]]:
        """(day, skill, count) from `since_day` on, newest day first."""
        q = (
            select(usage.c.day, usage.c.skill, usage.c.count)
            .where(usage.c.user == user, usage.c.day >= since_day, usage.c.count > 0)
            .order_by(usage.c.day.desc(), usage.c.skill)
        )
        async with self._db.engine.connect() as conn:
            return [(r[0], r[1], int(r[2])) for r in await conn.execute(q)]


@dataclass(frozen=True, slots=True)
class Pairing:
    code: str
    user: str
    chat: str
    created_at: datetime
    expires_at: datetime
    approved_at: datetime | None = None
    approved_by: str | None = None


ApproveOutcome = Literal["approved", "unknown", "expired", "already"]


class PairingRepo:
    """Short codes an unknown user gets in a private chat, until an admin approves one."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def issue(self, user: str, chat: str, ttl_s: float) -> Pairing:
        """The user's pending code, or a new one: repeating a message does not change the code."""
        now = utcnow()
        async with self._db.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(pairing)
                    .where(pairing.c.user == user, pairing.c.approved_at.is_(None), pairing.c.expires_at > now)
                    .order_by(pairing.c.created_at.desc())
                    .limit(1)
                )
            ).first()
        if r is not None:
            return _pairing(r)
        expires = now + timedelta(seconds=ttl_s)
        for _ in range(8):
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            try:
                async with self._db.engine.begin() as conn:
                    await conn.execute(
                        pairing.insert().values(code=code, user=user, chat=chat, created_at=now, expires_at=expires)
                    )
            except IntegrityError:
                continue  # the code is taken (by an approved or a live one): draw another
            return Pairing(code, user, chat, now, expires)
        raise RuntimeError("could not draw a free pairing code")

    async def approve(self, code: str, by: str) -> tuple[ApproveOutcome, Pairing | None]:
        """Approve a live code, once; otherwise say why not (unknown, expired, already used)."""
        code = code.strip().upper()
        now = utcnow()
        async with self._db.engine.begin() as conn:
            r = (
                await conn.execute(
                    update(pairing)
                    .where(pairing.c.code == code, pairing.c.approved_at.is_(None), pairing.c.expires_at > now)
                    .values(approved_at=now, approved_by=by)
                    .returning(*pairing.c)
                )
            ).first()
            if r is not None:
                return "approved", _pairing(r)
            r = (await conn.execute(select(pairing).where(pairing.c.code == code))).first()
        if r is None:
            return "unknown", None
        found = _pairing(r)
        return ("already" if found.approved_at is not None else "expired"), found

    async def forget_expired(self) -> int:
        """Drop codes that expired unused; approved ones stay as the record of who let whom in."""
        async with self._db.engine.begin() as conn:
            done = await conn.execute(
                delete(pairing).where(pairing.c.expires_at < utcnow(), pairing.c.approved_at.is_(None))
            )
        return int(done.rowcount or 0)

    async def get(self, code: str) -> Pairing | None:
        async with self._db.engine.connect() as conn:
            r = (await conn.execute(select(pairing).where(pairing.c.code == code.strip().upper()))).first()
        return None if r is None else _pairing(r)


def _pairing(r: Any) -> Pairing:
    return Pairing(r.code, r.user, r.chat, r.created_at, r.expires_at, r.approved_at, r.approved_by)
