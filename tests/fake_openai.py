"""A fake OpenAI-compatible chat server on 127.0.0.1 that streams and records what it receives.

`POST /v1/chat/completions` with `"stream": true` answers `text/event-stream`: one `data:` chunk
per piece of the answer (`choices[0].delta.content`), a usage chunk whose `choices` is empty,
then `data: [DONE]`, each followed by a blank line. Behaviour is scripted per test:

- `answer`: a function from the request's messages to the reply text (default: echoes the
  last user turn as `"re: <text>"`), cut into `chunk_chars`-sized pieces;
- `fail(status, n, headers)`: the next n requests get that HTTP status with an OpenAI error body;
- `hang_next(n)` / `hang = True`: accept the request and never answer;
- `first_token_delay_s`, `chunk_delay_s`: a slow model; `hang_after_first = True`: one chunk
  then silence; `reasoning`: a thinking model's reasoning, streamed before the answer.

`requests` holds every request body (JSON), `headers` their headers; `max_active` the most
requests in progress at once; `first_token_s` the server-side time from a request's arrival to
its first chunk written, for the benchmark.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web


def echo_answer(messages: list[dict[str, Any]]) -> str:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {"content": ""})
    return f"re: {last['content']}"


class FakeOpenAI:
    def __init__(self, answer: Callable[[list[dict[str, Any]]], str] = echo_answer, chunk_chars: int = 3) -> None:
        self.answer = answer
        self.chunk_chars = chunk_chars
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.first_token_s: list[float] = []
        # The same, by the request's last user turn (to match replies sent in parallel).
        self.first_token_for: dict[str, float] = {}
        self.first_token_delay_s = 0.0
        self.chunk_delay_s = 0.0
        self.hang = False
        self.hang_after_first = False
        # A thinking model: this streams first as `reasoning_content`, `reasoning_delay_s` a piece.
        self.reasoning = ""
        self.reasoning_delay_s = 0.0
        self._hang_next = 0
        self._failures: list[tuple[int, dict[str, str]]] = []
        self.active = 0
        self.max_active = 0
        self._hung: list[asyncio.Event] = []
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.changed = asyncio.Event()

    @property
    def base_url(self) -> str:
        """What `[[models]] base_url` takes: the server with `/v1`."""
        return f"{self.url}/v1"

    def fail(self, status: int, n: int = 1, headers: dict[str, str] | None = None) -> None:
        """The next n requests get `status` (with these headers, e.g. Retry-After)."""
        self._failures.extend([(status, headers or {})] * n)

    def hang_next(self, n: int = 1) -> None:
        self._hang_next += n

    def messages(self, i: int = -1) -> list[dict[str, Any]]:
        return list(self.requests[i]["messages"])

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for ev in self._hung:
            ev.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_requests(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.requests)} model requests within {timeout}s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=0.05)
            except TimeoutError:
                pass

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._answer(request)
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.changed.set()
        if self._failures:
            status, headers = self._failures.pop(0)
            return web.json_response(
                {"error": {"message": f"fake failure {status}", "type": "server_error", "code": None}},
                status=status,
                headers=headers,
            )
        if self.hang or self._hang_next:
            self._hang_next = max(0, self._hang_next - 1)
            await self._wait_forever()
            return web.Response(status=503)
        text = self.answer(body["messages"])
        pieces = [text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)] or [""]
        if not body.get("stream"):
            return web.json_response(_completion(body, text))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if self.first_token_delay_s:
            await asyncio.sleep(self.first_token_delay_s)
        for piece in [
            self.reasoning[i : i + self.chunk_chars] for i in range(0, len(self.reasoning), self.chunk_chars)
        ]:
            await response.write(_data(_chunk(body, {"reasoning_content": piece})))
            await asyncio.sleep(self.reasoning_delay_s)
        for i, piece in enumerate(pieces):
            if i and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            await response.write(_data(_chunk(body, delta)))
            if i == 0:
                took = time.perf_counter() - arrived
                self.first_token_s.append(took)
                last = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), None)
                if last is not None:
                    self.first_token_for[str(last.get("content"))] = took
                if self.hang_after_first:
                    await self._wait_forever()
                    return response
        await response.write(_data(_chunk(body, {}, finish="stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = sum(len(str(m.get("content", ""))) for m in body["messages"]) // 4
            usage = {"prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces)}
            await response.write(_data({**_chunk(body, {}), "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _wait_forever(self) -> None:
        ev = asyncio.Event()
        self._hung.append(ev)
        await ev.wait()


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _data(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()
