"""Capped, jittered exponential backoff: the one formula every retry loop uses."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Attempt 1 → about `base` seconds, doubling each attempt, capped; jittered to half–full so
    that many retries started together spread out."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay * random.uniform(0.5, 1.0)
