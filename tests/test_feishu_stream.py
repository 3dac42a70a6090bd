"""Feishu chat replies as CardKit streaming cards, the whole-message fallback, jobs, and loop lag."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from fake_feishu import GROUP_CHAT_ID, USER_OPEN_ID, FakeFeishu, bot_mention, feishu_toml, message_event, post_signed
from fake_openai import FakeOpenAI
from fake_providers import FakeHunyuan, video_bytes
from harness import eventually, make_settings, running_hub
from jobs_helpers import job_ref, providers_toml

from hub.channels.feishu import FeishuChannel


def model_toml(model: FakeOpenAI) -> str:
    return f"""
[[models]]
name = "main"
base_url = "{model.base_url}"
api_key = "sk-test"
model = "fake-chat"
first_token_timeout_s = 5
timeout_s = 20
"""


@pytest.fixture
async def fs() -> AsyncIterator[FakeFeishu]:
    fake = FakeFeishu()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(answer=lambda messages: "The quick brown fox jumps over the lazy dog, " * 6, chunk_chars=6)
    fake.chunk_delay_s = 0.05
    await fake.start()
    yield fake
    await fake.stop()


async def test_a_streamed_answer_types_into_a_card_and_ends_with_streaming_closed(
    tmp_path: Path, fs: FakeFeishu, model: FakeOpenAI
) -> None:
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url) + model_toml(model))) as h:
        event = message_event("@_user_1 tell me", chat_type="group", mentions=[bot_mention()], message_id="om_q1")
        assert (await post_signed(h.url, event))[0] == 200
        await fs.wait_for(lambda: any(not c["streaming"] for c in fs.cards.values()), timeout=30)
        ((card_id, card),) = fs.cards.items()
        created = fs.of("/open-apis/cardkit/v1/cards")[0].json
        assert created["type"] == "card_json"
        assert card["card"]["schema"] == "2.0" and card["card"]["config"]["streaming_mode"] is True
        assert card["card"]["body"]["elements"][0]["tag"] == "markdown"
        # Sent as an interactive message replying to the question.
        (sent,) = fs.messages()
        assert sent.path == "/open-apis/im/v1/messages/om_q1/reply" and sent.json["msg_type"] == "interactive"
        assert sent.content == {"type": "card", "data": {"card_id": card_id}}
        answer = "The quick brown fox jumps over the lazy dog, " * 6
        contents = card["contents"]
        assert len(contents) >= 3 and contents[-1] == answer.strip()
        assert all(answer.startswith(c) for c in contents)  # the text only grows
        seqs = card["sequences"]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # strictly increasing, settings last
        updates = fs.of("/content", "PUT")
        per_second = max(sum(1 for u in updates if 0 <= u.at - first.at < 1.0) for first in updates)
        assert per_second <= 6  # at most 5 a second (one of slack for clock edges)
        assert fs.of("/settings", "PATCH")[-1].json["sequence"] == seqs[-1]

        async def recorded() -> bool:  # recorded: a restart does not send it again
            return [r["status"] for r in await h.hub.outbox_repo.all_rows()] == ["sent"]

        await eventually(recorded)
        assert len(fs.messages()) == 1  # no extra text message


@pytest.mark.parametrize("failure", ["no permission", "server error", "not json"])
async def test_when_the_card_cannot_be_created_the_answer_comes_whole_and_cards_stop(
    tmp_path: Path, fs: FakeFeishu, model: FakeOpenAI, failure: str
) -> None:
    if failure == "no permission":
        fs.deny_cards = True
    elif failure == "server error":
        fs.card_failure = lambda: web.json_response({"code": 1000004, "msg": "internal error"}, status=500)
    else:
        fs.card_failure = lambda: web.Response(text="<html>502 Bad Gateway</html>", status=200)
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url) + model_toml(model))) as h:
        for text in ("first", "second"):
            await post_signed(h.url, message_event(text))
        await fs.wait_for(lambda: len(fs.messages()) == 2, timeout=30)
        answer = ("The quick brown fox jumps over the lazy dog, " * 6).strip()
        assert [(m.json["msg_type"], m.content) for m in fs.messages()] == [("text", {"text": answer})] * 2
        assert len(fs.of("/open-apis/cardkit/v1/cards")) == 1  # this process stopped trying cards
        ch = h.hub.channels["feishu"]
        assert isinstance(ch, FeishuChannel) and not ch.cards_enabled


async def test_with_streaming_off_the_answer_comes_whole(tmp_path: Path, fs: FakeFeishu, model: FakeOpenAI) -> None:
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url, streaming=False) + model_toml(model))) as h:
        await post_signed(h.url, message_event("hi"))
        await fs.wait_for(lambda: len(fs.messages()) == 1, timeout=30)
        assert fs.messages()[0].json["msg_type"] == "text" and fs.of("/cardkit/v1/cards") == []
        assert h.hub.channels["feishu"].limits.can_edit is False


async def test_a_finished_video_job_arrives_as_a_media_message(tmp_path: Path, fs: FakeFeishu) -> None:
    hunyuan = FakeHunyuan(queued_s=0.1, running_s=0.2)
    await hunyuan.start()
    try:
        toml = feishu_toml(fs.url) + providers_toml(hunyuan=hunyuan.url)
        async with running_hub(make_settings(tmp_path, toml)) as h:
            event = message_event(
                "@_user_1 /video a piglet singing", chat_type="group", mentions=[bot_mention()], message_id="om_v"
            )
            await post_signed(h.url, event)
            await fs.wait_for(lambda: len(fs.messages()) >= 1)
            job_id = job_ref(fs.messages()[0].content["text"])
            await fs.wait_for(lambda: any(m.json["msg_type"] == "media" for m in fs.messages()), timeout=30)
            media = next(m for m in fs.messages() if m.json["msg_type"] == "media")
            assert media.path == "/open-apis/im/v1/messages/om_v/reply"
            content = media.content
            upload = fs.uploads[content["file_key"]]
            assert upload["file_type"] == "mp4" and upload["file"]["data"] == video_bytes(next(iter(hunyuan.jobs)))
            assert content["image_key"] in fs.uploads  # the cover

            async def delivered() -> bool:
                job = await h.hub.jobs.get(job_id)
                return job is not None and job.state == "delivered"

            await eventually(delivered, timeout=20)
            job = await h.hub.jobs.get(job_id)
            assert job is not None and str(job.chat) == f"feishu:group:{GROUP_CHAT_ID}"
    finally:
        await hunyuan.stop()


async def test_no_feishu_call_blocks_the_loop_while_the_token_endpoint_is_slow(tmp_path: Path, fs: FakeFeishu) -> None:
    fs.token_delay_s = 2.0
    async with running_hub(make_settings(tmp_path, feishu_toml(fs.url))) as h:
        fs.revoke_tokens()  # the next call fetches a token again, slowly
        lags: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - before - 0.01)

        tick = asyncio.create_task(ticker())
        try:
            await post_signed(h.url, message_event("/help"))
            await fs.wait_for(lambda: len(fs.messages()) == 1, timeout=30)
        finally:
            stop.set()
            await tick
        assert len(fs.of("/tenant_access_token/internal")) == 2
        assert fs.messages()[0].json["receive_id"] == USER_OPEN_ID
        assert max(lags) < 0.1, max(lags)
