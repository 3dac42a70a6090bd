"""Capped, jittered exponential backoff: the one formula every retry loop uses."""

from __future__ import annotations

import asyncio
import random


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Attempt 1 → about `base` seconds, doubling each attempt, capped; jittered to half–full so
    that many retries started together spread out."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay * random.uniform(0.5, 1.0)


class Backoff:
    """`backoff_delay` for a loop: each `sleep` waits longer, `reset` after a success."""

    def __init__(self, *, base: float = 1.0, cap: float = 300.0) -> None:
        self._base = base
        self._cap = cap
        self.attempt = 0

    async def sleep(self) -> None:
        self.attempt += 1
        await asyncio.sleep(backoff_delay(self.attempt, base=self._base, cap=self._cap))

    def reset(self) -> None:
        self.attempt = 0
