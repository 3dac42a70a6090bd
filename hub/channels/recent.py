"""Answers a platform gave a moment ago (who a group's admins are), kept for a short while.

A burst of commands in one group costs one call: concurrent asks for one key share the call
in flight, and its answer is kept for `ttl_s`, at most `size` of them, oldest dropped first.
A lookup that raises is not kept: the next ask tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentAnswers(Generic[K, V]):
    def __init__(self, ttl_s: float = 60.0, size: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_s
        self._size = size
        self._clock = clock
        self._kept: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._pending: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, lookup: Callable[[], Awaitable[V]]) -> V:
        hit = self._kept.get(key)
        if hit is not None:
            if self._clock() - hit[0] < self._ttl:
                return hit[1]
            del self._kept[key]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(lookup())
            pending.add_done_callback(lambda done: self._settle(key, done))
        # One asker giving up (its event cancelled) does not cancel the others' call.
        return await asyncio.shield(pending)

    def _settle(self, key: K, done: asyncio.Future[V]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if done.cancelled() or done.exception() is not None:
            return
        self._kept[key] = (self._clock(), done.result())
        self._kept.move_to_end(key)
        while len(self._kept) > self._size:
            self._kept.popitem(last=False)

    def close(self) -> None:
        """Cancel the calls still in flight (the channel is closing) and forget every answer."""
        for pending in list(self._pending.values()):
            pending.cancel()
        self._pending.clear()
        self._kept.clear()
