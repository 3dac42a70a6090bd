"""What the job poller needs from a generation backend, and the HTTP helpers they share.

A long-job provider (video, music) is submitted to once and polled until it says completed or
failed; an image provider answers one call with the image. Every failure is a ProviderError
whose `retryable` says whether trying again later may help (network trouble, 429, 5xx) or not
(the request was refused).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
from pydantic import SecretStr

from hub.client import HttpClient
from hub.errors import ProviderError
from hub.fetch import Fetcher, FetchError, FetchTooLarge

PollStatus = Literal["queued", "running", "completed", "failed"]


class ProviderSession(HttpClient):
    """A provider's one HTTP session with its auth headers: opened at start, closed once."""

    def __init__(self, api_key: SecretStr | None, **headers: str) -> None:
        self._headers = {"Content-Type": "application/json", **headers}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        super().__init__(headers=self._headers)

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "provider not started"
        return self._http

    async def close(self) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class Poll:
    """One look at a provider's job. `url` is set when completed, `error` when failed."""

    status: PollStatus
    url: str | None = None
    error: str | None = None
    progress: int | None = None


class JobProvider(Protocol):
    """A backend whose work takes minutes: submit, then poll."""

    name: str
    # The media kind of the result: "video" or "audio".
    media: str
    poll_interval_s: float
    timeout_s: float

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, prompt: str) -> str:
        """Start the work; returns the provider's job id."""
        ...

    async def poll(self, provider_job_id: str) -> Poll: ...


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """An image as the provider gave it: bytes, or a URL to fetch them from."""

    data: bytes | None = None
    url: str | None = None
    mime: str = "image/png"


class ImageProvider(Protocol):
    name: str
    timeout_s: float
    job_after_s: float

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, prompt: str) -> GeneratedImage: ...


def retryable_status(status: int) -> bool:
    return status in (408, 409, 425, 429) or status >= 500


def error_text(body: bytes, limit: int = 300) -> str:
    """The provider's own message from an error body (`error.message`, `message`, ...)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:limit]
    found = message_in(data)
    return (found or json.dumps(data, ensure_ascii=False))[:limit]


def message_in(data: Any) -> str | None:
    """The first message found under `error`, `message`, ... (nested), if any."""
    if isinstance(data, str):
        return data
    if isinstance(data, Mapping):
        for key in ("error", "message", "msg", "detail", "error_message"):
            if key in data:
                found = message_in(data[key])
                if found:
                    return found
    return None


async def request_json(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    timeout_s: float = 30.0,
    **kwargs: Any,
) -> Any:
    """One JSON call; network trouble and 429/5xx are retryable, other 4xx are not."""
    try:
        async with http.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise ProviderError(
                    f"{what}: HTTP {resp.status}: {error_text(body)}", retryable=retryable_status(resp.status)
                )
            try:
                return json.loads(body)
            except ValueError:
                raise ProviderError(f"{what}: answer is not JSON", retryable=True) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderError(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from exc


@asynccontextmanager
async def download(
    fetcher: Fetcher, url: str, *, max_bytes: int, timeout_s: float = 600.0
) -> AsyncIterator[tuple[str | None, AsyncIterator[bytes]]]:
    """Open a result URL through the guarded fetcher: yields its media type and its body as chunks.

    A refused address is a final ProviderError; FetchTooLarge passes through for the caller.
    """
    try:
        async with fetcher.open(url, max_bytes=max_bytes, timeout_s=timeout_s) as result:
            yield result.content_type, _provider_errors(result.chunks())
    except FetchTooLarge:
        raise
    except FetchError as exc:
        detail = f": {error_text(exc.body)}" if exc.body else ""
        raise ProviderError(f"download: {exc}{detail}", retryable=exc.retryable) from None


async def _provider_errors(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for piece in chunks:
            yield piece
    except FetchTooLarge:
        raise
    except FetchError as exc:
        raise ProviderError(f"download: {exc}", retryable=exc.retryable) from None
