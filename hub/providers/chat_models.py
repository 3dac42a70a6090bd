"""The model gateway: OpenAI-compatible chat models from `[[models]]`, streamed.

One `AsyncOpenAI` client per model, opened at start and closed at stop; every call reuses its
connections. A call gets its first token within `first_token_timeout_s` and finishes within
`timeout_s`; 429 and 5xx answers (and refused connections) before the first token are retried
with capped, jittered backoff inside that first-token budget. Whatever goes wrong surfaces as
one ProviderError, for the skill to turn into a plain sentence. A global semaphore bounds the
model calls in flight, so a slow model holds at most that many chats and never the ingress.

The request goes through the client's own `post` with the chunks left as decoded JSON: the
SDK's typed path walks the parameters through its transform and builds a pydantic model per
chunk, milliseconds of CPU before the first token reaches the user, for the two strings a
chunk is read for. Auth, base URL, timeouts, status errors and SSE decoding stay the SDK's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from hub.backoff import backoff_delay
from hub.errors import ProviderError
from hub.settings import ModelSettings

log = logging.getLogger("hub.models")

# Status codes worth another try before the first token: rate limited, or the server's trouble.
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# Sent when a model needs no key (a local server): the SDK insists on one.
NO_KEY = "none"

OnDelta = Callable[[str], Awaitable[None]]
# One streamed chunk as the model sent it: `choices[0].delta.content`, maybe `usage`.
Chunk = object
ChunkStream = openai.AsyncStream[Chunk]


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    first_token_s: float
    total_s: float
    attempts: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits in [d/2, d], d = min(cap, base·2ⁿ)."""

    base_s: float = 0.5
    cap_s: float = 8.0
    attempts: int = 3

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = backoff_delay(attempt + 1, base=self.base_s, cap=self.cap_s)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap_s))
        return wait


class ModelGateway:
    def __init__(
        self, models: Sequence[ModelSettings], *, max_concurrent: int = 16, backoff: Backoff | None = None
    ) -> None:
        if not models:
            raise ValueError("the gateway needs at least one model")
        self._models = {m.name: m for m in models}
        self._default = next((m.name for m in models if m.default), models[0].name)
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.backoff = backoff or Backoff()
        self.in_flight = 0

    # --- what there is ----------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._models)

    @property
    def default(self) -> str:
        """The configured default (an admin's run-time choice is the skill's business)."""
        return self._default

    def settings(self, name: str) -> ModelSettings:
        return self._models[name]

    def find(self, name: str) -> str | None:
        """The model's exact name for what a user typed (case-insensitive), or None."""
        if name in self._models:
            return name
        folded = name.casefold()
        return next((n for n in self._models if n.casefold() == folded), None)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        for m in self._models.values():
            self._clients[m.name] = openai.AsyncOpenAI(
                api_key=m.api_key.get_secret_value() if m.api_key else NO_KEY,
                base_url=m.base_url,
                # Retries are ours (before the first token only); the SDK's would ignore our budget.
                max_retries=0,
                timeout=openai.Timeout(
                    m.timeout_s, connect=min(10.0, m.first_token_timeout_s), read=m.first_token_timeout_s
                ),
            )
        log.info("event=models_started models=%s default=%s", ",".join(self._models), self._default)

    async def stop(self) -> None:
        clients, self._clients = self._clients, {}
        for name, client in clients.items():
            try:
                await client.close()
            except Exception:
                log.exception("event=model_close_failed model=%s", name)

    # --- calling ----------------------------------------------------------------------

    async def complete(self, name: str, messages: Sequence[Mapping[str, Any]], on_delta: OnDelta) -> Completion:
        """Stream a reply from model `name`, awaiting `on_delta` per piece; the whole reply back.

        Raises ProviderError when the model fails, hangs or is slower than its timeouts;
        `on_delta` may have been called with part of the reply by then.
        """
        m = self._models.get(name)
        client = self._clients.get(name)
        if m is None or client is None:
            raise ProviderError(f"model {name!r} is not available")
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(m.timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise ProviderError(f"model {name}: no free slot within {m.timeout_s:.0f}s", retryable=True) from None
        self.in_flight += 1
        try:
            return await self._complete(m, client, messages, on_delta, started)
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def _complete(
        self,
        m: ModelSettings,
        client: openai.AsyncOpenAI,
        messages: Sequence[Mapping[str, Any]],
        on_delta: OnDelta,
        queued_at: float,
    ) -> Completion:
        loop = asyncio.get_running_loop()
        began = loop.time()
        parts: list[str] = []
        try:
            async with asyncio.timeout(m.timeout_s):
                stream, first, attempts = await self._open(m, client, messages, began + m.first_token_timeout_s)
                first_at = loop.time()
                usage = _usage_of(first)
                try:
                    chunk: Chunk | None = first
                    while chunk is not None:
                        usage = _usage_of(chunk) or usage
                        content = _content_of(chunk)
                        if content:
                            parts.append(content)
                            await on_delta(content)
                        chunk = await _next_chunk(stream)
                finally:
                    await _close(stream)
        except TimeoutError:
            raise ProviderError(f"model {m.name}: reply not finished within {m.timeout_s:.0f}s") from None
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            raise _provider_error(m.name, exc) from exc
        except openai.OpenAIError as exc:
            raise ProviderError(f"model {m.name}: {type(exc).__name__}") from exc
        done = loop.time()
        result = Completion(
            text="".join(parts),
            model=m.name,
            first_token_s=first_at - began,
            total_s=done - began,
            attempts=attempts,
            prompt_tokens=_count(usage, "prompt_tokens"),
            completion_tokens=_count(usage, "completion_tokens"),
        )
        log.info(
            "event=model_reply model=%s wait_ms=%.0f first_ms=%.0f total_ms=%.0f attempts=%d chars=%d "
            "prompt_tokens=%s completion_tokens=%s",
            m.name,
            (began - queued_at) * 1000,
            result.first_token_s * 1000,
            result.total_s * 1000,
            attempts,
            len(result.text),
            result.prompt_tokens,
            result.completion_tokens,
        )
        return result

    async def _open(
        self,
        m: ModelSettings,
        client: openai.AsyncOpenAI,
        messages: Sequence[Mapping[str, Any]],
        first_deadline: float,
    ) -> tuple[ChunkStream, Chunk, int]:
        """Send the request until a first chunk with output (or the end) arrives, retrying
        what is worth it; the open stream, that chunk and the number of attempts."""
        attempt = 0
        while True:
            attempt += 1
            stream: ChunkStream | None = None
            try:
                async with asyncio.timeout_at(first_deadline):
                    stream = await client.post(
                        "/chat/completions",
                        body=self._request(m, messages),
                        cast_to=object,
                        stream=True,
                        stream_cls=ChunkStream,
                    )
                    first = await _first_output(stream)
                return stream, first, attempt
            except TimeoutError:
                await _close(stream)
                raise ProviderError(
                    f"model {m.name}: no first token within {m.first_token_timeout_s:.0f}s", retryable=True
                ) from None
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                await _close(stream)
                delay = self._retry_delay(exc, attempt, first_deadline)
                if delay is None:
                    raise _provider_error(m.name, exc) from exc
                log.info(
                    "event=model_retry model=%s attempt=%d error=%s wait_s=%.2f", m.name, attempt, _describe(exc), delay
                )
                await asyncio.sleep(delay)
            except BaseException:
                await _close(stream)
                raise

    def _request(self, m: ModelSettings, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        req: dict[str, Any] = {
            "model": m.model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for key in ("temperature", "max_tokens", "top_p", "frequency_penalty"):
            value = getattr(m, key)
            if value is not None:
                req[key] = value
        return req

    def _retry_delay(self, exc: openai.APIError, attempt: int, first_deadline: float) -> float | None:
        """How long to wait before trying again, or None when not to."""
        if attempt >= self.backoff.attempts:
            return None
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code not in RETRY_STATUS:
                return None
            retry_after = _retry_after(exc.response.headers)
        elif isinstance(exc, openai.APITimeoutError):
            return None  # the connect timeout spent the budget already
        else:
            retry_after = None
        delay = self.backoff.delay(attempt - 1, retry_after)
        if asyncio.get_running_loop().time() + delay >= first_deadline:
            return None
        return delay


async def _next_chunk(stream: ChunkStream) -> Chunk | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _first_output(stream: ChunkStream) -> Chunk:
    """Read up to the first chunk with output: text, or the reasoning a thinking model streams
    before its answer (it is alive, though nothing shows yet). An empty stream gives an empty
    chunk (with the usage, if one came)."""
    usage = None
    while (chunk := await _next_chunk(stream)) is not None:
        usage = _usage_of(chunk) or usage
        if _content_of(chunk) or _reasoning_of(chunk):
            if usage is not None and _usage_of(chunk) is None and isinstance(chunk, dict):
                chunk = {**chunk, "usage": usage}
            return chunk
    return {"choices": [], "usage": usage}


async def _close(stream: ChunkStream | None) -> None:
    if stream is not None:
        with contextlib.suppress(Exception):
            await stream.close()


def _delta_of(chunk: Chunk) -> dict[str, Any]:
    """`choices[0].delta` of a chunk; empty for anything else (a usage chunk, a stray value)."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return {}
    delta = choices[0].get("delta")
    return delta if isinstance(delta, dict) else {}


def _content_of(chunk: Chunk) -> str:
    value = _delta_of(chunk).get("content")
    return value if isinstance(value, str) else ""


def _reasoning_of(chunk: Chunk) -> str:
    """A thinking model's reasoning (`reasoning_content`, an extension field): never shown."""
    value = _delta_of(chunk).get("reasoning_content")
    return value if isinstance(value, str) else ""


def _usage_of(chunk: Chunk) -> dict[str, Any] | None:
    usage = chunk.get("usage") if isinstance(chunk, dict) else None
    return usage if isinstance(usage, dict) else None


def _count(usage: dict[str, Any] | None, key: str) -> int | None:
    value = (usage or {}).get(key)
    return value if isinstance(value, int) else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _describe(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    return type(exc).__name__


def _provider_error(model: str, exc: openai.APIError) -> ProviderError:
    retryable = isinstance(exc, openai.APIConnectionError) or (
        isinstance(exc, openai.APIStatusError) and exc.status_code in RETRY_STATUS
    )
    return ProviderError(f"model {model}: {_describe(exc)}", retryable=retryable)
