"""Callback nonces: the memory that makes a signature which does not cover the body single-use.

WeChat plain mode signs token, timestamp and nonce only. Each (timestamp, nonce) is stored
with the SHA-256 of its body: the same pair with the same body is the platform retrying, with
another body it is someone replaying a signature they saw. The first INSERT wins on the unique
key, so two processes racing with different bodies cannot both accept.
"""

from __future__ import annotations

import hmac
import logging
import time

from sqlalchemy import delete, func, select

from hub.storage.db import Database, utcnow
from hub.storage.models import callback_nonces

log = logging.getLogger("hub.storage")


class NonceRepo:
    def __init__(self, db: Database, *, keep_s: float, prune_every_s: float = 60.0) -> None:
        self._db = db
        self.keep_s = keep_s
        self._prune_every_s = prune_every_s
        self._next_prune = 0.0

    async def remember(self, channel: str, timestamp: int, nonce: str, body_sha256: str) -> bool:
        """Record the pair; True when it is new or was seen with this same body, else False."""
        stmt = (
            self._db.insert(callback_nonces)
            .on_conflict_do_nothing(index_elements=["timestamp", "nonce", "channel"])
            .returning(callback_nonces.c.id)
            .values(channel=channel, timestamp=timestamp, nonce=nonce, body_sha256=body_sha256, created_at=utcnow())
        )
        key = (
            (callback_nonces.c.timestamp == timestamp)
            & (callback_nonces.c.nonce == nonce)
            & (callback_nonces.c.channel == channel)
        )
        async with self._db.engine.begin() as conn:
            inserted = (await conn.execute(stmt)).first() is not None
            seen = None if inserted else (await conn.execute(select(callback_nonces.c.body_sha256).where(key))).scalar()
        await self._maybe_prune()
        if inserted:
            return True
        # Gone between the two statements only if pruned, i.e. far outside the window: refuse.
        return seen is not None and hmac.compare_digest(seen.encode(), body_sha256.encode())

    async def prune(self, now: float | None = None) -> int:
        """Forget pairs whose timestamp is older than `keep_s`; returns how many."""
        cutoff = int((time.time() if now is None else now) - self.keep_s)
        async with self._db.engine.begin() as conn:
            result = await conn.execute(delete(callback_nonces).where(callback_nonces.c.timestamp < cutoff))
        return int(result.rowcount or 0)

    async def count(self) -> int:
        async with self._db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(callback_nonces))).scalar_one())

    async def _maybe_prune(self) -> None:
        # At most once a minute per process, on the request path: one indexed DELETE.
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self._prune_every_s
        try:
            if removed := await self.prune():
                log.info("event=callback_nonces_pruned count=%d", removed)
        except Exception:  # a missed prune costs a few rows, never the callback
            log.exception("event=callback_nonces_prune_failed")
