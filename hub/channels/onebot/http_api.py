"""The implementation's HTTP API (`api_base`): `POST <api_base>/<action>` with the token.

One client session for the channel's life, keep-alive, opened at start. HTTP statuses mapped
once: 400 and 404 (bad params, no such action) are final; 401/403 (the token) wait a minute,
as an operator fixing the token should not lose the messages queued meanwhile; 5xx and
network errors are retried with the outbox's backoff.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from hub import jsoncodec
from hub.errors import SendError

_JSON = {"Content-Type": "application/json"}


class HttpApi:
    def __init__(self, api_base: str, access_token: str | None, *, timeout_s: float = 30.0) -> None:
        self._base = api_base.rstrip("/")
        self._headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, action: str, params: dict[str, Any]) -> Any:
        if self._session is None:
            raise SendError("the OneBot HTTP API client is not started", retryable=True)
        try:
            async with self._session.post(
                f"{self._base}/{action}", data=jsoncodec.dumps_bytes(params), headers=_JSON
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"{action}: {type(exc).__name__}", retryable=True) from None
        if status in (401, 403):
            raise SendError(f"{action}: HTTP {status} (check [onebot] access_token)", retryable=True, retry_after=60)
        if status in (400, 404):
            raise SendError(f"{action}: HTTP {status}", retryable=False)
        if status >= 300:
            raise SendError(f"{action}: HTTP {status}", retryable=True)
        try:
            return jsoncodec.loads(body)
        except (ValueError, RecursionError):
            raise SendError(f"{action}: answer is not JSON", retryable=True) from None
