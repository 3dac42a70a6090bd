"""The model gateway against the fake OpenAI-compatible server: streaming, retries, timeouts,
the global bound on calls in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fake_openai import FakeOpenAI
from harness import free_port

from hub.errors import ProviderError
from hub.providers.chat_models import Backoff, ModelGateway
from hub.settings import ModelSettings

FAST = Backoff(base_s=0.01, cap_s=0.05, attempts=3)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


def model(base_url: str, **kw: object) -> ModelSettings:
    values: dict[str, object] = dict(
        name="m", base_url=base_url, model="fake-chat", api_key="sk-x", first_token_timeout_s=1, timeout_s=3
    )
    values.update(kw)
    return ModelSettings.model_validate(values)


@pytest.fixture
async def gateway(fake: FakeOpenAI) -> AsyncIterator[ModelGateway]:
    gw = ModelGateway([model(fake.base_url, temperature=0.6, max_tokens=256, top_p=0.95, frequency_penalty=0.1)])
    gw.backoff = FAST
    await gw.start()
    yield gw
    await gw.stop()


def collector() -> tuple[list[str], Callable[[str], Awaitable[None]]]:
    seen: list[str] = []

    async def on_delta(delta: str) -> None:
        seen.append(delta)

    return seen, on_delta


USER = [{"role": "user", "content": "hello there"}]


async def test_a_reply_streams_in_pieces_with_the_models_parameters(gateway: ModelGateway, fake: FakeOpenAI) -> None:
    seen, on_delta = collector()
    result = await gateway.complete("m", USER, on_delta)
    assert seen == ["re:", " he", "llo", " th", "ere"]
    assert result.text == "re: hello there" and result.attempts == 1
    assert result.completion_tokens == 5 and result.prompt_tokens is not None
    assert fake.requests == [
        {
            "model": "fake-chat",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.6,
            "max_tokens": 256,
            "top_p": 0.95,
            "frequency_penalty": 0.1,
        }
    ]
    assert fake.headers[0]["Authorization"] == "Bearer sk-x"


async def test_429_and_5xx_are_retried_before_the_first_token(gateway: ModelGateway, fake: FakeOpenAI) -> None:
    fake.fail(429)
    fake.fail(502)
    seen, on_delta = collector()
    result = await gateway.complete("m", USER, on_delta)
    assert result.attempts == 3 and result.text == "re: hello there"
    assert "".join(seen) == "re: hello there", "nothing of the failed attempts leaked"


async def test_retry_after_is_honoured_within_the_cap(gateway: ModelGateway, fake: FakeOpenAI) -> None:
    gateway.backoff = Backoff(base_s=0.01, cap_s=0.3, attempts=2)
    fake.fail(429, headers={"Retry-After": "0.25"})
    started = time.monotonic()
    await gateway.complete("m", USER, collector()[1])
    assert 0.25 <= time.monotonic() - started < 0.9


async def test_giving_up_after_the_attempts(gateway: ModelGateway, fake: FakeOpenAI) -> None:
    fake.fail(500, 5)
    with pytest.raises(ProviderError, match="http_500") as err:
        await gateway.complete("m", USER, collector()[1])
    assert err.value.retryable
    assert len(fake.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(gateway: ModelGateway, fake: FakeOpenAI, status: int) -> None:
    fake.fail(status)
    with pytest.raises(ProviderError, match=f"http_{status}"):
        await gateway.complete("m", USER, collector()[1])
    assert len(fake.requests) == 1


async def test_no_first_token_in_time(gateway: ModelGateway, fake: FakeOpenAI) -> None:
    fake.hang_next()
    started = time.monotonic()
    with pytest.raises(ProviderError, match="no first token within 1s"):
        await gateway.complete("m", USER, collector()[1])
    assert 0.9 < time.monotonic() - started < 2.5
    # The next call is fine: nothing of the hung one is left in the way.
    assert (await gateway.complete("m", USER, collector()[1])).text == "re: hello there"


async def test_a_thinking_model_is_alive_while_it_reasons(gateway: ModelGateway, fake: FakeOpenAI) -> None:
    # 1.5 s of reasoning before the answer: past the 1 s first-token budget, yet not hung.
    fake.reasoning = "Let me think about this step by step."
    fake.chunk_chars = 6
    fake.reasoning_delay_s = 0.2
    seen, on_delta = collector()
    result = await gateway.complete("m", USER, on_delta)
    assert result.text == "re: hello there" and "".join(seen) == "re: hello there", "the reasoning is not shown"
    assert result.first_token_s < 0.5


async def test_a_reply_slower_than_the_total_timeout(fake: FakeOpenAI) -> None:
    gw = ModelGateway([model(fake.base_url, timeout_s=1.0, first_token_timeout_s=1.0)])
    await gw.start()
    try:
        fake.chunk_delay_s = 0.3  # five pieces: 1.2 s
        seen, on_delta = collector()
        started = time.monotonic()
        with pytest.raises(ProviderError, match="not finished within 1s"):
            await gw.complete("m", USER, on_delta)
        assert time.monotonic() - started < 2.0
        assert 0 < len(seen) < 5, "the part that came was passed on"
    finally:
        await gw.stop()


async def test_a_model_that_refuses_connections(fake: FakeOpenAI) -> None:
    gw = ModelGateway([model(f"http://127.0.0.1:{free_port()}/v1")], backoff=FAST)
    await gw.start()
    try:
        started = time.monotonic()
        with pytest.raises(ProviderError, match="APIConnectionError"):
            await gw.complete("m", USER, collector()[1])
        assert time.monotonic() - started < 1.0
    finally:
        await gw.stop()


async def test_model_calls_in_flight_are_bounded(fake: FakeOpenAI) -> None:
    gw = ModelGateway([model(fake.base_url)], max_concurrent=2)
    await gw.start()
    try:
        fake.first_token_delay_s = 0.1
        results = await asyncio.gather(
            *(gw.complete("m", [{"role": "user", "content": f"n{i}"}], collector()[1]) for i in range(6))
        )
        assert sorted(r.text for r in results) == [f"re: n{i}" for i in range(6)]
        assert fake.max_active == 2
        assert gw.in_flight == 0
    finally:
        await gw.stop()


async def test_names_lookup_and_stop(fake: FakeOpenAI) -> None:
    gw = ModelGateway([model(fake.base_url, name="Qwen3"), model(fake.base_url, name="gpt", default=True)])
    assert gw.names == ["Qwen3", "gpt"] and gw.default == "gpt"
    assert gw.find("qwen3") == "Qwen3" and gw.find("nope") is None
    await gw.start()
    await gw.stop()
    with pytest.raises(ProviderError, match="not available"):
        await gw.complete("gpt", USER, collector()[1])
    with pytest.raises(ValueError):
        ModelGateway([])


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(base_s=0.5, cap_s=8.0)
    for attempt, top in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 8.0), (20, 8.0)]:
        waits = {b.delay(attempt) for _ in range(50)}
        assert all(top / 2 <= w <= top for w in waits) and len(waits) > 1
    assert b.delay(0, retry_after=3.0) == 3.0
    assert b.delay(0, retry_after=600.0) == 8.0
