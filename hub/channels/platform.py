"""What every platform API client (WeChat and WeCom, Feishu, QQ) shares: one session that refuses
calls before start, one access-token cache whose refusals are retried slowly, and the request
that names only the path in its errors (the URL and the headers carry the token or the secret).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from hub import jsoncodec
from hub.client import HttpClient
from hub.errors import SendError

log = logging.getLogger("hub.tokens")


class TokenRefused(SendError):
    """The platform refused the app's credentials. Retried slowly (`retry_after`, a minute by
    default): they stay wrong until the configuration changes, and a fixed one lets the waiting
    messages through."""

    def __init__(self, reason: str, *, retry_after: float = 60.0) -> None:
        super().__init__(reason, retryable=True, retry_after=retry_after)


class TokenCache:
    """An access_token fetched once, reused until shortly before it expires.

    One refresh at a time: callers that find the token stale, or refused, wait on one lock,
    and whoever comes second finds the new token there instead of fetching another.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[str, float]]],
        *,
        margin_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._margin = margin_s
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0
        # The last fetch was refused (a wrong secret, an address not allowed): the API is failing.
        self.refused = False

    def _fresh(self) -> str | None:
        return self._token if self._token is not None and self._clock() < self._refresh_at else None

    async def get(self) -> str:
        token = self._fresh()
        if token is not None:
            return token
        async with self._lock:
            return self._fresh() or await self._refresh()

    async def renew(self, refused: str) -> str:
        """The platform refused `refused`: a new token, unless another caller already got one."""
        async with self._lock:
            token = self._fresh()
            if token is not None and token != refused:
                return token
            return await self._refresh()

    async def _refresh(self) -> str:
        self.fetches += 1
        try:
            token, expires_in = await self._fetch()
        except TokenRefused:
            self.refused = True
            raise
        self.refused = False
        # Refresh ahead of expiry: 5 minutes early, or a tenth of a short lifetime.
        margin = min(self._margin, expires_in / 10)
        self._token = token
        self._refresh_at = self._clock() + max(0.0, expires_in - margin)
        log.info("event=token_refreshed expires_in=%.0f fetches=%d", expires_in, self.fetches)
        return token


class PlatformApi(HttpClient, abc.ABC):
    """A platform API client: one session (opened at start), one token cache over `_fetch_token`."""

    # Who is not started, in the error a send before start gets.
    label = "the channel"

    def __init__(
        self,
        api_base: str,
        *,
        timeout_s: float = 30.0,
        upload_timeout_s: float = 180.0,
        token_margin_s: float = 300.0,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._upload_timeout = aiohttp.ClientTimeout(total=upload_timeout_s)
        super().__init__(timeout=self._timeout)
        self.tokens = TokenCache(self._fetch_token, margin_s=token_margin_s)

    @abc.abstractmethod
    async def _fetch_token(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds; TokenRefused when the platform refuses."""

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise SendError(f"{self.label} is not started", retryable=True, retry_after=5.0)
        return self._http

    @property
    def failing(self) -> bool:
        """Whether the platform refused the last token fetch (for /admin status and /healthz)."""
        return self.tokens.refused

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        form: aiohttp.FormData | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """`<api_base><path>`: the status, the whole answer and its headers. A JSON body goes as
        UTF-8 as is (the platforms show \\u escapes literally in places); a form (an upload) gets
        the longer timeout; a transport failure is a retryable SendError naming the path."""
        data: Any = form
        all_headers = dict(headers or {})
        if json is not None:
            data = jsoncodec.dumps_bytes(json)
            all_headers["Content-Type"] = "application/json; charset=utf-8"
        timeout = self._upload_timeout if form is not None else self._timeout
        try:
            async with self.http.request(
                method, self.api_base + path, params=params, data=data, headers=all_headers, timeout=timeout
            ) as resp:
                return resp.status, await resp.read(), resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"{path}: {type(exc).__name__}", retryable=True) from None
