"""Capped, jittered exponential backoff: the one formula every retry loop uses."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 300.0, factor: float = 2.0, low: float = 0.5
) -> float:
    """Attempt 1 → about `base` seconds, growing by `factor` each attempt, capped; jittered down
    to `low` of that so that many retries started together spread out."""
    delay = min(cap, base * (factor ** max(0, attempt - 1)))
    return delay * random.uniform(low, 1.0)


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0
    low: float = 0.5


class Backoff:
    """A retry loop's sleeper: each `asleep()` waits the next delay; `reset()` after a success."""

    def __init__(self, config: BackoffConfig) -> None:
        self._config = config
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    async def asleep(self) -> None:
        self._attempt += 1
        c = self._config
        await asyncio.sleep(backoff_delay(self._attempt, base=c.base, cap=c.cap, factor=c.factor, low=c.low))
