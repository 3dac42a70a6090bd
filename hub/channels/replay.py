"""Replay protection for callbacks whose signature does not cover the body (WeChat plain mode).

Such a signature proves only that the platform once made a request with this timestamp and
nonce: anyone who saw that URL (a proxy log) could post a body of their own under it. So the
timestamp must be within WINDOW_S of now (either direction), and each (timestamp, nonce) is
bound to the first body it came with, in the database so every process sees it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable

from hub.errors import VerificationFailed
from hub.storage.nonces import NonceRepo

WINDOW_S = 300
NONCE_MAX = 128
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class ReplayGuard:
    def __init__(
        self, nonces: NonceRepo, channel: str, *, window_s: int = WINDOW_S, clock: Callable[[], float] = time.time
    ) -> None:
        self._nonces = nonces
        self._channel = channel
        self.window_s = window_s
        self._clock = clock

    async def check(self, timestamp: str, nonce: str, body: bytes) -> None:
        """Raise VerificationFailed (403) unless this is a fresh request or a retry of the same body."""
        if not _TIMESTAMP.fullmatch(timestamp):
            raise VerificationFailed("timestamp is not a number of seconds", 403)
        ts = int(timestamp)
        if abs(self._clock() - ts) > self.window_s:
            raise VerificationFailed(f"timestamp more than {self.window_s} s from now", 403)
        if not nonce or len(nonce) > NONCE_MAX:
            raise VerificationFailed("missing or oversized nonce", 403)
        digest = hashlib.sha256(body).hexdigest()
        if not await self._nonces.remember(self._channel, ts, nonce, digest):
            raise VerificationFailed("timestamp and nonce already used with another body", 403)
