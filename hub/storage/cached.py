"""A value read from the database and kept for a few seconds, reloaded ahead of its expiry.

Settings read on every message (the personas, the admins, the default model) are cached for a
short `ttl_s`, so another process's change shows within it. Once the value is half that old, a
use starts a reload in the background and is answered with the value it has: a steady stream of
messages never waits for the query, and no value older than `ttl_s` is ever used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("hub.storage")
T = TypeVar("T")


class Cached(Generic[T]):
    def __init__(
        self, load: Callable[[], Awaitable[T]], ttl_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._load = load
        self._ttl = ttl_s
        self._clock = clock
        self._value: tuple[float, T] | None = None
        # The load in flight, shared by every use that needs it.
        self._loading: asyncio.Task[T] | None = None
        # Bumped by invalidate: a load that began before it does not keep what it read.
        self._generation = 0

    async def get(self) -> T:
        if self._value is not None:
            at, value = self._value
            age = self._clock() - at
            if age < self._ttl:
                if age >= self._ttl / 2 and self._loading is None:
                    self._start()
                return value
        task = self._loading or self._start()
        # Shielded: a use that is cancelled leaves the load to the others waiting for it.
        return await asyncio.shield(task)

    def invalidate(self) -> None:
        """Forget the value (this process changed it): the next use reads it again."""
        self._value = None
        self._loading = None
        self._generation += 1

    def _start(self) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(self._reload(self._generation))
        task.add_done_callback(_retrieve)
        self._loading = task
        return task

    async def _reload(self, generation: int) -> T:
        began = self._clock()
        try:
            value = await self._load()
        finally:
            if generation == self._generation:
                self._loading = None
        if generation == self._generation:
            # As old as the moment the read began: never counted younger than it is.
            self._value = (began, value)
        return value


def _retrieve(task: asyncio.Task[object]) -> None:
    """A background reload that failed is tried again by the next use: note it, once."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("event=cache_reload_failed error=%r", exc)
