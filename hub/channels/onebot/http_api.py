"""The implementation's HTTP API (`api_base`): `POST <api_base>/<action>` with the token.

One client session for the channel's life, keep-alive, opened at start. HTTP statuses mapped
once: 400 and 404 (bad params, no such action) are final; 401/403 (the token) wait a minute,
as an operator fixing the token should not lose the messages queued meanwhile; 5xx and
network errors are retried with the outbox's backoff.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.payload import BytesPayload
from yarl import URL

from hub import jsoncodec
from hub.errors import SendError


class HttpApi:
    def __init__(self, api_base: str, access_token: str | None, *, timeout_s: float = 30.0) -> None:
        self._base = api_base.rstrip("/")
        self._headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}  # parsed once per action, not per call

    async def start(self) -> None:
        if self._session is None:
            # No cookie jar: the API sets none worth keeping, and the jar is looked up per call.
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers=self._headers, cookie_jar=aiohttp.DummyCookieJar()
            )

    def _url(self, action: str) -> URL:
        url = self._urls.get(action)
        if url is None:
            url = self._urls[action] = URL(f"{self._base}/{action}")
        return url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, action: str, params: dict[str, Any]) -> Any:
        if self._session is None:
            raise SendError("the OneBot HTTP API client is not started", retryable=True)
        try:
            # A ready payload with its type: no per-call payload lookup nor header merge.
            body = BytesPayload(jsoncodec.dumps_bytes(params), content_type="application/json")
            async with self._session.post(self._url(action), data=body) as resp:
                answer = await resp.read()
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
            return jsoncodec.loads(answer)
        except (ValueError, RecursionError):
            raise SendError(f"{action}: answer is not JSON", retryable=True) from None
