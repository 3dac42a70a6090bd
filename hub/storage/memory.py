"""Conversation memory: each chat's turns, newest kept, trimmed to a token budget when read.

Turns are stored in exchanges (a user turn and the assistant's answer, written together once
the answer is complete), so what is read back always alternates user/assistant. In a group the
user turn carries the speaker's name and is shown to the model as `"<name>: <text>"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select

from hub.storage.db import Database, utcnow
from hub.storage.models import memory

# Per-message framing a chat template adds (role markers, separators), in tokens.
MESSAGE_OVERHEAD = 4
# Rows kept per chat: far more than any context window takes back, so storage stays bounded.
KEEP_ROWS = 2000
_PAGE = 200


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


@dataclass(frozen=True, slots=True)
class _Exchange:
    chat: str
    user: str
    assistant: str
    name: str | None
    event_id: str | None


class MemoryRepo:
    def __init__(self, db: Database, keep_rows: int = KEEP_ROWS) -> None:
        self._db = db
        self._keep = keep_rows
        self._kind = f"memory.add:{id(self)}"
        db.writer.register_sync(self._kind, self._add_batch)

    async def add_exchange(
        self, chat: str, *, user: str, assistant: str, name: str | None = None, event_id: str | None = None
    ) -> None:
        """Store a completed exchange; the same `event_id` twice stores it once."""
        await self._db.writer.submit(self._kind, _Exchange(chat, user, assistant, name, event_id))

    def _add_batch(self, conn: Connection, items: list[_Exchange]) -> Sequence[None]:
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
        for row in rows:
            conn.execute(stmt, row)
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
        return [None] * len(items)

    async def recent(self, chat: str, budget_tokens: int) -> list[Turn]:
        """The newest whole exchanges whose tokens fit the budget, oldest first."""
        picked: list[tuple[Turn, Turn]] = []
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
                    cost = r.tokens + pending.tokens
                    if used + cost > budget_tokens:
                        return _flatten(picked)
                    used += cost
                    picked.append(
                        (
                            Turn("user", speaker_content(r.content, r.name), r.tokens),
                            Turn("assistant", pending.content, pending.tokens),
                        )
                    )
                    pending = None
                if len(rows) < _PAGE:
                    return _flatten(picked)
                before = rows[-1].id

    async def count(self, chat: str) -> int:
        """Stored turns of a chat."""
        async with self._db.engine.connect() as conn:
            n = (await conn.execute(select(func.count()).select_from(memory).where(memory.c.chat == chat))).scalar()
        return int(n or 0)

    async def clear(self, chat: str) -> int:
        """Forget a chat's conversation; the number of turns removed."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(delete(memory).where(memory.c.chat == chat))
        return int(result.rowcount or 0)


def _flatten(pairs: list[tuple[Turn, Turn]]) -> list[Turn]:
    out: list[Turn] = []
    for user, assistant in reversed(pairs):
        out += [user, assistant]
    return out
