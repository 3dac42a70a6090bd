"""The lifecycle every outbound API client shares (platform APIs, model and media providers):
one aiohttp session, opened at start and closed at stop, each at most once."""

from __future__ import annotations

from typing import Any

import aiohttp


class HttpClient:
    def __init__(self, **session_options: Any) -> None:
        # aiohttp.ClientSession keywords (timeout, headers): the session is made at start.
        self._session_options = session_options
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(**self._session_options)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
