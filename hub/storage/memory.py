"""Conversation memory: each chat's turns, newest kept, trimmed to a token budget when read.

Turns are stored in exchanges (a user turn and the assistant's answer, written together once
the answer is complete), so what is read back always alternates user/assistant. In a group the
user turn carries the speaker's name and is shown to the model as `"<name>: <text>"`.

A process that is the database's only user (SQLite, held by one `hub run`) keeps each busy
chat's newest exchanges in memory as well, written through after every commit: a chat message
then reads its history without a query on the way to the model's first token.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, select

from hub.storage.db import Database, utcnow
from hub.storage.models import memory

# Per-message framing a chat template adds (role markers, separators), in tokens.
MESSAGE_OVERHEAD = 4
# Rows kept per chat: far more than any context window takes back, so storage stays bounded.
KEEP_ROWS = 2000
_PAGE = 200
# Tokens of history kept in memory over all chats (a few MB of text); the least recently used
# chats are dropped first.
CACHE_TOKENS = 2_000_000


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate that errs high: ASCII text at 3 characters a token (English
    averages about 4), every other character a token (CJK runs 0.6 to 1.3 a token), plus the
    message's framing."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return -(-ascii_chars // 3) + (len(text) - ascii_chars) + MESSAGE_OVERHEAD


def speaker_content(text: str, name: str | None) -> str:
    """What the model sees of a user turn: in a group, who said it."""
    return f"{name}: {text}" if name else text


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str  # as the model sees it
    tokens: int


Pair = tuple[Turn, Turn]


@dataclass(slots=True)
class _Recent:
    """A chat's newest exchanges as stored, newest first. They answer any budget they overflow
    (`tokens` beyond it), and every budget when `whole` (the chat has no older exchange)."""

    pairs: deque[Pair] = field(default_factory=deque)
    tokens: int = 0
    whole: bool = True
    need: int = 0  # the largest budget asked for: what trimming keeps covered

    def answer(self, budget: int) -> list[Turn] | None:
        if not self.whole and self.tokens <= budget:
            return None
        self.need = max(self.need, budget)
        return _fit(self.pairs, budget)[0]


@dataclass(frozen=True, slots=True)
class _Exchange:
    chat: str
    user: str
    assistant: str
    name: str | None
    event_id: str | None


class MemoryRepo:
    def __init__(
        self, db: Database, keep_rows: int = KEEP_ROWS, *, sole_user: bool = False, cache_tokens: int = CACHE_TOKENS
    ) -> None:
        """`sole_user`: no other process writes this database, so what this one wrote is what
        there is, and recent turns may be served from memory."""
        self._db = db
        self._keep = keep_rows
        self._kind = f"memory.add:{id(self)}"
        db.writer.register_sync(self._kind, self._add_batch)
        self._cached = sole_user
        self._cache: OrderedDict[str, _Recent] = OrderedDict()
        self._cache_tokens = cache_tokens
        self._tokens = 0
        # One reader or writer of a chat's turns at a time, so the copy in memory follows the
        # commits in order (a chat's events are handled in order anyway: nobody waits).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, chat: str) -> asyncio.Lock:
        lock = self._locks.get(chat)
        if lock is None:
            lock = self._locks[chat] = asyncio.Lock()
        return lock

    async def add_exchange(
        self, chat: str, *, user: str, assistant: str, name: str | None = None, event_id: str | None = None
    ) -> None:
        """Store a completed exchange; the same `event_id` twice stores it once."""
        ex = _Exchange(chat, user, assistant, name, event_id)
        if not self._cached:
            await self._db.writer.submit(self._kind, ex)
            return
        async with self._lock(chat):
            try:
                stored = await self._db.writer.submit(self._kind, ex)
            except BaseException:
                self._drop(chat)  # committed or not: ask the database next time
                raise
            entry = self._cache.get(chat)
            if entry is None:
                return
            if stored is None:
                self._drop(chat)  # one of its turns was there already: what is stored is unclear
            elif stored:
                self._prepend(chat, entry, _pair(user, assistant, name))

    def _add_batch(self, conn: Connection, items: list[_Exchange]) -> Sequence[bool | None]:
        """Per exchange: True when both turns were stored, False when neither (stored before),
        None when only one was."""
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for ex in items:
            rows.append(
                dict(
                    chat=ex.chat,
                    role="user",
                    name=ex.name,
                    content=ex.user,
                    tokens=estimate_tokens(speaker_content(ex.user, ex.name)),
                    event_id=ex.event_id,
                    created_at=now,
                )
            )
            rows.append(
                dict(
                    chat=ex.chat,
                    role="assistant",
                    name=None,
                    content=ex.assistant,
                    tokens=estimate_tokens(ex.assistant),
                    event_id=ex.event_id,
                    created_at=now,
                )
            )
        stmt = self._db.insert(memory).on_conflict_do_nothing(index_elements=["chat", "event_id", "role"])
        # One statement per row keeps each exchange's two ids adjacent and in order.
        inserted = [conn.execute(stmt, row).rowcount == 1 for row in rows]
        for chat in {ex.chat for ex in items}:
            oldest_kept = (
                select(memory.c.id)
                .where(memory.c.chat == chat)
                .order_by(memory.c.id.desc())
                .offset(self._keep - 1)
                .limit(1)
                .scalar_subquery()
            )
            conn.execute(delete(memory).where(memory.c.chat == chat, memory.c.id < oldest_kept))
        out: list[bool | None] = []
        for i in range(len(items)):
            user_in, assistant_in = inserted[2 * i], inserted[2 * i + 1]
            out.append(user_in if user_in == assistant_in else None)
        return out

    async def recent(self, chat: str, budget_tokens: int) -> list[Turn]:
        """The newest whole exchanges whose tokens fit the budget, oldest first."""
        if not self._cached:
            return _fit(await self._read(chat, budget_tokens), budget_tokens)[0]
        async with self._lock(chat):
            entry = self._cache.get(chat)
            if entry is not None:
                turns = entry.answer(budget_tokens)
                if turns is not None:
                    self._cache.move_to_end(chat)
                    return turns
            pairs = await self._read(chat, budget_tokens)
            turns, whole = _fit(pairs, budget_tokens)
            self._drop(chat)
            fresh = _Recent(deque(pairs), sum(_cost(p) for p in pairs), whole, budget_tokens)
            self._cache[chat] = fresh
            self._tokens += fresh.tokens
            self._evict()
            return turns

    async def _read(self, chat: str, budget_tokens: int) -> list[Pair]:
        """The chat's newest exchanges, newest first: those within the budget and the first one
        beyond it (if there is one)."""
        picked: list[Pair] = []
        used = 0
        before: int | None = None
        pending: Any = None  # an assistant row waiting for its user row (paging splits pairs)
        async with self._db.engine.connect() as conn:
            while True:
                q = select(memory).where(memory.c.chat == chat).order_by(memory.c.id.desc()).limit(_PAGE)
                if before is not None:
                    q = q.where(memory.c.id < before)
                rows = (await conn.execute(q)).all()
                for r in rows:
                    if r.role == "assistant":
                        pending = r
                        continue
                    if pending is None or (pending.event_id != r.event_id):
                        pending = None  # an orphan turn: skip it, keep alternation
                        continue
                    picked.append(
                        (
                            Turn("user", speaker_content(r.content, r.name), r.tokens),
                            Turn("assistant", pending.content, pending.tokens),
                        )
                    )
                    used += r.tokens + pending.tokens
                    if used > budget_tokens:
                        return picked
                    pending = None
                if len(rows) < _PAGE:
                    return picked
                before = rows[-1].id

    def _prepend(self, chat: str, entry: _Recent, pair: Pair) -> None:
        entry.pairs.appendleft(pair)
        entry.tokens += _cost(pair)
        self._tokens += _cost(pair)
        # The database keeps the newest `keep` rows: so does the copy (still every exchange).
        while len(entry.pairs) > self._keep // 2:
            self._pop_oldest(entry)
        # Older exchanges than the largest budget asked for needs are not worth the memory.
        while len(entry.pairs) > 1 and entry.tokens - _cost(entry.pairs[-1]) > entry.need:
            self._pop_oldest(entry)
            entry.whole = False
        self._cache.move_to_end(chat)
        self._evict()

    def _pop_oldest(self, entry: _Recent) -> None:
        cost = _cost(entry.pairs.pop())
        entry.tokens -= cost
        self._tokens -= cost

    def _drop(self, chat: str) -> None:
        entry = self._cache.pop(chat, None)
        if entry is not None:
            self._tokens -= entry.tokens

    def _evict(self) -> None:
        while self._tokens > self._cache_tokens and self._cache:
            self._drop(next(iter(self._cache)))

    async def count(self, chat: str) -> int:
        """Stored turns of a chat."""
        async with self._db.engine.connect() as conn:
            n = (await conn.execute(select(func.count()).select_from(memory).where(memory.c.chat == chat))).scalar()
        return int(n or 0)

    async def clear(self, chat: str) -> int:
        """Forget a chat's conversation; the number of turns removed."""
        if not self._cached:
            return await self._clear(chat)
        async with self._lock(chat):
            self._drop(chat)
            removed = await self._clear(chat)
            self._cache[chat] = _Recent()
            return removed

    async def _clear(self, chat: str) -> int:
        async with self._db.engine.begin() as conn:
            result = await conn.execute(delete(memory).where(memory.c.chat == chat))
        return int(result.rowcount or 0)


def _pair(user: str, assistant: str, name: str | None) -> Pair:
    """An exchange as `recent` reads it back."""
    seen = speaker_content(user, name)
    return Turn("user", seen, estimate_tokens(seen)), Turn("assistant", assistant, estimate_tokens(assistant))


def _cost(pair: Pair) -> int:
    return pair[0].tokens + pair[1].tokens


def _fit(pairs: Iterable[Pair], budget_tokens: int) -> tuple[list[Turn], bool]:
    """The newest exchanges (of `pairs`, newest first) up to the first that passes the budget,
    as turns oldest first; and whether every exchange fitted."""
    picked: list[Pair] = []
    used = 0
    whole = True
    for pair in pairs:
        used += _cost(pair)
        if used > budget_tokens:
            whole = False
            break
        picked.append(pair)
    out: list[Turn] = []
    for user, assistant in reversed(picked):
        out += [user, assistant]
    return out, whole
