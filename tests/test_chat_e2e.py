"""The chat skill end to end: web chat in, the fake model's requests and the streamed answer out."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fake_openai import FakeOpenAI
from fakechan import SECRET, FakeChannel
from harness import FakeServer, RunningHub, eventually, make_settings, running_hub, text_of, web_chat
from sqlalchemy import func, select

from hub.i18n import texts
from hub.providers.chat_models import Backoff
from hub.settings import Settings
from hub.skills.chat import EMPTY_ANSWER, MODEL_DOWN, NO_MODEL
from hub.storage.memory import estimate_tokens
from hub.storage.models import inbox, memory

# The seed's persona injection, zh frame (REFERENCE.md "Persona injection").
LIN_SYSTEM = (
    "你正在扮演以下角色，必须完全以这个身份说话。\n"
    "【角色设定】姓名:林小雨 外貌:短发，戴圆框眼镜 性格:温柔，爱开玩笑 "
    "背景故事:在杭州开书店 对话风格:口语化，爱用比喻\n"
    "【知识库】熟悉中国现代文学"
)
LIN_RESTATE = "从现在开始，你是林小雨，不是其他任何AI。请以这个身份和我对话。"
LIN_GREETING = "你好呀，欢迎来到我的书店！"

PERSONAS = """
[[personas]]
name = "林小雨"
appearance = "短发，戴圆框眼镜"
personality = "温柔，爱开玩笑"
background = "在杭州开书店"
style = "口语化，爱用比喻"
knowledge = "熟悉中国现代文学"
greeting = "你好呀，欢迎来到我的书店！"
language = "zh"
default = true

[[personas]]
name = "Captain"
personality = "gruff but kind"
background = "sailed the seven seas"
style = "short sentences"
greeting = "Ahoy."
language = "en"
restate = false
"""


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


def settings_for(
    tmp_path: Path,
    model: FakeOpenAI,
    extra: str = "",
    *,
    context_length: int = 8192,
    first_token_s: float = 1,
    timeout_s: float = 3,
) -> Settings:
    return make_settings(
        tmp_path,
        f"""
[[models]]
name = "main"
base_url = "{model.base_url}"
api_key = "sk-test"
model = "fake-chat"
temperature = 0.6
top_p = 0.95
context_length = {context_length}
first_token_timeout_s = {first_token_s}
timeout_s = {timeout_s}
"""
        + extra,
    )


def fast_retries(h: RunningHub) -> None:
    assert h.hub.models is not None
    h.hub.models.backoff = Backoff(base_s=0.01, cap_s=0.05, attempts=3)


async def unfinished_events(h: RunningHub) -> int:
    async with h.hub.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).where(inbox.c.status != "done"))).scalar() or 0)


async def stored_turns(h: RunningHub, chat: str) -> list[tuple[str, str]]:
    async with h.hub.db.engine.connect() as conn:
        rows = await conn.execute(
            select(memory.c.role, memory.c.content).where(memory.c.chat == chat).order_by(memory.c.id)
        )
        return [(r.role, r.content) for r in rows]


async def test_the_persona_is_injected_and_the_reply_streams(tmp_path: Path, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, model, PERSONAS)) as h:
        items = await web_chat(h.url, "s1", "你好，今天有什么好书？")
    assert text_of(items) == "re: 你好，今天有什么好书？"
    chunks = [i for i in items if isinstance(i, dict)]
    assert len(chunks) > 1, "the answer arrives in pieces as the model streams"
    assert items[-1] == "[DONE]"
    req = model.requests[-1]
    assert req["model"] == "fake-chat" and req["stream"] is True
    assert req["temperature"] == 0.6 and req["top_p"] == 0.95
    assert model.headers[-1]["Authorization"] == "Bearer sk-test"
    assert req["messages"] == [
        {"role": "system", "content": LIN_SYSTEM},
        {"role": "user", "content": LIN_RESTATE},
        {"role": "assistant", "content": LIN_GREETING},
        {"role": "user", "content": "你好，今天有什么好书？"},
    ]


async def test_history_is_remembered_across_a_restart_and_reset_clears_it(tmp_path: Path, model: FakeOpenAI) -> None:
    settings = settings_for(tmp_path, model, PERSONAS)
    async with running_hub(settings) as h:
        assert text_of(await web_chat(h.url, "s1", "first")) == "re: first"
        assert text_of(await web_chat(h.url, "s1", "second")) == "re: second"
        assert model.messages()[3:] == [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "re: first"},
            {"role": "user", "content": "second"},
        ]
        # Another chat has its own memory.
        await web_chat(h.url, "other", "hello")
        assert model.messages()[3:] == [{"role": "user", "content": "hello"}]

    async with running_hub(settings) as h:  # a new process on the same data_dir
        await web_chat(h.url, "s1", "third")
        assert [m["content"] for m in model.messages()[3:]] == ["first", "re: first", "second", "re: second", "third"]
        reset = await web_chat(h.url, "s1", "/reset")
        # The default persona speaks Chinese, so the chat is answered in Chinese.
        assert text_of(reset) == "记忆已清空：本会话从头开始。"
        assert await stored_turns(h, "web:private:s1") == []
        await web_chat(h.url, "s1", "fourth")
        assert model.messages()[3:] == [{"role": "user", "content": "fourth"}]
        assert model.messages()[0] == {"role": "system", "content": LIN_SYSTEM}


async def test_history_is_trimmed_to_the_context_length(tmp_path: Path, model: FakeOpenAI) -> None:
    # 600 tokens of context, 150 kept for the answer: room for the opening, the new turn and a
    # few of the ~70-token exchanges below.
    extra = PERSONAS + "\n"
    settings = settings_for(tmp_path, model, extra, context_length=600)
    async with running_hub(settings) as h:
        for i in range(12):
            await web_chat(h.url, "s1", f"message {i:02d} " + "lorem ipsum " * 8)
        messages = model.messages()
    assert messages[:3] == [
        {"role": "system", "content": LIN_SYSTEM},
        {"role": "user", "content": LIN_RESTATE},
        {"role": "assistant", "content": LIN_GREETING},
    ]
    history = messages[3:]
    assert history[-1]["content"].startswith("message 11 ")
    # The oldest turns went, the newest stayed whole and in order, roles alternate.
    assert not any(m["content"].startswith(("message 00", "re: message 00")) for m in history)
    assert history[-3]["content"].startswith("message 10 ") and history[-2]["content"].startswith("re: message 10 ")
    assert [m["role"] for m in history] == ["user", "assistant"] * (len(history) // 2) + ["user"]
    assert len(history) >= 3
    assert sum(estimate_tokens(m["content"]) for m in messages) <= 600 - 150
    numbers = [int(m["content"].split()[1]) for m in history if m["role"] == "user"]
    assert numbers == list(range(12 - len(numbers), 12)), "a contiguous run of the newest turns"


async def test_a_model_answering_500_gives_one_plain_sentence(tmp_path: Path, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, model)) as h:
        fast_retries(h)
        model.fail(500, 3)
        items = await web_chat(h.url, "s1", "hello?")
        assert text_of(items) == MODEL_DOWN
        assert len(model.requests) == 3, "retried before giving up"
        assert await unfinished_events(h) == 0
        assert await stored_turns(h, "web:private:s1") == [], "no dangling user turn"
        # Two failures then success: the retries hide it.
        model.fail(503, 2)
        assert text_of(await web_chat(h.url, "s1", "again")) == "re: again"
        assert len(model.requests) == 6
        assert model.messages()[-1] == {"role": "user", "content": "again"}
        assert len(model.messages()) == 1, "the failed turn left nothing in the history"


async def test_a_400_is_not_retried(tmp_path: Path, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, model)) as h:
        fast_retries(h)
        model.fail(400)
        assert text_of(await web_chat(h.url, "s1", "hello?")) == MODEL_DOWN
        assert len(model.requests) == 1
        model.fail(400)
        zh = {"Accept-Language": "zh-CN"}
        assert text_of(await web_chat(h.url, "z1", "你好？", headers=zh)) == "模型暂时没有响应，请过一分钟再试。"


async def test_a_hanging_model_times_out_and_nothing_is_stuck(tmp_path: Path, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, model)) as h:
        model.hang_next()
        started = time.monotonic()
        items = await web_chat(h.url, "s1", "are you there?")
        took = time.monotonic() - started
        assert text_of(items) == MODEL_DOWN
        assert 0.9 < took < 2.5, f"the first-token timeout is 1 s, took {took:.1f}s"
        assert await unfinished_events(h) == 0
        assert text_of(await web_chat(h.url, "s1", "now?")) == "re: now?"
        assert model.messages() == [{"role": "user", "content": "now?"}]


async def test_a_model_that_stops_mid_answer_keeps_the_part_and_says_so(tmp_path: Path, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, model)) as h:
        model.hang_after_first = True
        items = await web_chat(h.url, "s1", "tell me a story")
        assert text_of(items) == "re:" + "\n\n" + MODEL_DOWN
        assert await stored_turns(h, "web:private:s1") == []
        assert await unfinished_events(h) == 0
        model.hang_after_first = False
        assert text_of(await web_chat(h.url, "s1", "again")) == "re: again"


async def test_fifty_chats_in_parallel_get_their_own_answers(tmp_path: Path, model: FakeOpenAI) -> None:
    model.first_token_delay_s = 0.05
    model.chunk_delay_s = 0.005
    # Timeouts are other tests' business: on a loaded 2-core machine the full suite once kept 13
    # of 50 parallel first tokens past a 1 s deadline.
    async with running_hub(settings_for(tmp_path, model, first_token_s=15, timeout_s=30)) as h:

        async def one(i: int, word: str) -> tuple[int, str]:
            return i, text_of(await web_chat(h.url, f"chat{i}", f"{word} from chat {i}"))

        first = await asyncio.gather(*(one(i, "hello") for i in range(50)))
        assert all(text == f"re: hello from chat {i}" for i, text in first)
        second = await asyncio.gather(*(one(i, "bye") for i in range(50)))
        assert all(text == f"re: bye from chat {i}" for i, text in second)
        assert await unfinished_events(h) == 0
    assert len(model.requests) == 100
    for req in model.requests[50:]:
        turns = [m["content"] for m in req["messages"]]
        i = int(turns[-1].rsplit(" ", 1)[1])
        assert turns == [f"hello from chat {i}", f"re: hello from chat {i}", f"bye from chat {i}"]


async def test_persona_command_lists_switches_and_greets(tmp_path: Path, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, model, PERSONAS)) as h:
        # The default persona's language (zh) is the chat's until it switches to an English one.
        listing = text_of(await web_chat(h.url, "s1", "/persona"))
        assert listing == "本会话的人设是 林小雨。\n可用人设：Captain、林小雨（当前）\n发送 /persona <名称> 切换。"
        assert text_of(await web_chat(h.url, "s1", "/persona captain")) == "Ahoy."
        assert (await h.hub.chats.get("web:private:s1")).persona == "Captain"
        await web_chat(h.url, "s1", "where to?")
        system = model.messages()[0]
        assert system["role"] == "system"
        assert system["content"] == (
            "You are playing the following character and must speak entirely as them.\n"
            "[Character] Name: Captain Personality: gruff but kind Background: sailed the seven seas "
            "Style: short sentences"
        )
        assert model.messages()[1:] == [{"role": "user", "content": "where to?"}], "restate = false: no restatement"
        unknown = text_of(await web_chat(h.url, "s1", "/persona Nobody"))
        assert unknown == "There is no persona called Nobody. Personas: Captain, 林小雨."
        listing = text_of(await web_chat(h.url, "s1", "/persona"))
        assert (
            listing == "This chat talks to Captain.\nPersonas: Captain (current), 林小雨\nSwitch with /persona <name>."
        )
        assert (
            text_of(await web_chat(h.url, "s2", "/persona Nobody"))
            == "没有叫 Nobody 的人设。可用人设：Captain、林小雨。"
        )
        # Another chat still has the default persona.
        await web_chat(h.url, "s2", "hi")
        assert model.messages()[0]["content"] == LIN_SYSTEM


async def test_an_admin_added_persona_is_usable_at_once(tmp_path: Path, model: FakeOpenAI) -> None:
    async with running_hub(settings_for(tmp_path, model)) as h:
        assert "plain assistant" in text_of(await web_chat(h.url, "s1", "/persona"))
        await web_chat(h.url, "s1", "hi")
        assert model.messages() == [{"role": "user", "content": "hi"}], "no persona: a plain assistant"
        await h.hub.personas.add("Mia", {"personality": "cheerful", "greeting": "Hi, I'm Mia!", "language": "en"})
        assert text_of(await web_chat(h.url, "s1", "/persona Mia")) == "Hi, I'm Mia!"
        await web_chat(h.url, "s1", "hello")
        assert model.messages()[0]["content"].endswith("[Character] Name: Mia Personality: cheerful")
        assert model.messages()[1:3] == [
            {"role": "user", "content": "From now on you are Mia, not any other AI. Talk with me as this character."},
            {"role": "assistant", "content": "Hi, I'm Mia!"},
        ]


async def test_model_command_and_the_admins_default(tmp_path: Path, model: FakeOpenAI) -> None:
    other = FakeOpenAI(answer=lambda msgs: "from the other model")
    await other.start()
    try:
        extra = f"""
[[models]]
name = "Qwen3-Coder-30B"
base_url = "{other.base_url}"
model = "qwen3-coder"
context_length = 262144
max_tokens = 4096
"""
        async with running_hub(settings_for(tmp_path, model, extra)) as h:
            listing = text_of(await web_chat(h.url, "s1", "/model"))
            assert listing == (
                "This chat uses main.\nModels: main (current, default), Qwen3-Coder-30B\nSwitch with /model <name>."
            )
            zh = {"Accept-Language": "zh-CN"}
            assert text_of(await web_chat(h.url, "z1", "/model", headers=zh)) == (
                "本会话使用的模型是 main。\n可用模型：main（当前，默认）、Qwen3-Coder-30B\n发送 /model <名称> 切换。"
            )
            assert text_of(await web_chat(h.url, "z1", "/model gpt-9", headers=zh)) == (
                "没有叫 gpt-9 的模型。可用模型：main、Qwen3-Coder-30B。"
            )
            assert text_of(await web_chat(h.url, "z1", "/model qwen3-coder-30b", headers=zh)) == (
                "本会话已切换到模型 Qwen3-Coder-30B。"
            )
            assert (
                text_of(await web_chat(h.url, "s1", "/model qwen3-coder-30b")) == "This chat now uses Qwen3-Coder-30B."
            )
            assert text_of(await web_chat(h.url, "s1", "hi")) == "from the other model"
            assert other.requests[-1]["model"] == "qwen3-coder" and other.requests[-1]["max_tokens"] == 4096
            assert other.headers[-1]["Authorization"] == "Bearer none"
            assert "no model called gpt-9" in text_of(await web_chat(h.url, "s1", "/model gpt-9"))
            # Another chat follows the default, which an admin may change at run time.
            assert text_of(await web_chat(h.url, "s2", "hi")) == "re: hi"
            await h.hub.kv.set("default_model", "Qwen3-Coder-30B")
            await eventually(lambda: _uses_other(h.url), timeout=5)
    finally:
        await other.stop()


async def _uses_other(url: str) -> bool:
    return text_of(await web_chat(url, "s3", "which?")) == "from the other model"


async def test_without_models_chat_explains_how_to_add_one(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        assert text_of(await web_chat(h.url, "s1", "hello")) == NO_MODEL
        assert text_of(await web_chat(h.url, "s1", "/model")) == NO_MODEL
        assert text_of(await web_chat(h.url, "s1", "/reset")) == "Memory cleared: this conversation starts afresh."
        assert text_of(await web_chat(h.url, "s1", "/persona")) == (
            "No personas are set up: I answer as a plain assistant. Whoever runs this hub can add [[personas]] "
            "entries to config/hub.toml."
        )
        zh = {"Accept-Language": "zh-CN"}
        assert text_of(await web_chat(h.url, "z1", "hello", headers=zh)) == texts("zh")(NO_MODEL)
        assert text_of(await web_chat(h.url, "z1", "/model", headers=zh)).startswith("还没有配置聊天模型：")
        assert text_of(await web_chat(h.url, "z1", "/reset", headers=zh)) == "记忆已清空：本会话从头开始。"
        assert text_of(await web_chat(h.url, "z1", "/persona", headers=zh)).startswith("尚未设置任何人设：")


# --- through a platform without live streaming: replies go through the outbox --------------


@pytest.fixture
async def platform() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    counter = iter(range(1, 10**6))
    fake.on("POST", "/send", lambda r: web.json_response({"ok": True, "message_id": str(next(counter))}))
    await fake.start()
    yield fake
    await fake.stop()


async def post_event(url: str, body: dict[str, Any]) -> tuple[int, float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/webhooks/fake", data=json.dumps(body), headers={"X-Fake-Secret": SECRET}) as resp:
            await resp.read()
            return resp.status, time.monotonic() - started


async def test_a_group_is_one_conversation_with_speakers_named(
    tmp_path: Path, model: FakeOpenAI, platform: FakeServer
) -> None:
    channel = FakeChannel(platform.url)
    async with running_hub(settings_for(tmp_path, model), extra_channels=[channel]) as h:
        channel.bind(h.hub.dispatcher)
        base = {"chat": "g1", "group": True, "mention": True}
        await post_event(h.url, {**base, "id": "e1", "user": "u1", "text": "@FakeBot hi all"})
        await platform.wait_for(lambda: len(platform.calls("/send")) == 1)
        await post_event(h.url, {**base, "id": "e2", "user": "u2", "text": "@FakeBot and me"})
        await platform.wait_for(lambda: len(platform.calls("/send")) == 2)
        # Not addressed to the bot: not answered, not remembered.
        await post_event(h.url, {**base, "id": "e3", "user": "u2", "text": "chatting", "mention": False})
        sends = platform.calls("/send")
        assert sends[0].json["text"] == "re: Tester: @FakeBot hi all" and sends[0].json["quote"] == "e1"
        assert model.messages() == [
            {"role": "system", "content": "This is a group chat: each user message starts with the speaker's name."},
            {"role": "user", "content": "Tester: @FakeBot hi all"},
            {"role": "assistant", "content": "re: Tester: @FakeBot hi all"},
            {"role": "user", "content": "Tester: @FakeBot and me"},
        ]
        await eventually(lambda: _none_unfinished(h))
        assert [r for r, _ in await stored_turns(h, "fake:group:g1")] == ["user", "assistant"] * 2


async def test_a_hanging_model_never_delays_acks_or_other_chats(
    tmp_path: Path, model: FakeOpenAI, platform: FakeServer
) -> None:
    channel = FakeChannel(platform.url)
    async with running_hub(settings_for(tmp_path, model), extra_channels=[channel]) as h:
        channel.bind(h.hub.dispatcher)
        model.hang_next(3)
        acks = await asyncio.gather(
            *(post_event(h.url, {"id": f"h{i}", "chat": f"c{i}", "text": "hello"}) for i in range(3))
        )
        assert all(status == 200 and took < 1.0 for status, took in acks), acks
        # While those three hang, a fourth chat is answered at once.
        await model.wait_requests(3)
        status, _ = await post_event(h.url, {"id": "ok", "chat": "c9", "text": "quick"})
        assert status == 200
        await platform.wait_for(lambda: any(c.json["text"] == "re: quick" for c in platform.calls("/send")), 5)
        assert len(platform.calls("/send")) == 1
        # Then the hung ones time out with the plain sentence, each in its chat.
        await platform.wait_for(lambda: len(platform.calls("/send")) == 4, 5)
        down = sorted(c.json["chat"] for c in platform.calls("/send") if c.json["text"] == MODEL_DOWN)
        assert down == ["fake:private:c0", "fake:private:c1", "fake:private:c2"]
        await eventually(lambda: _none_unfinished(h))


async def _none_unfinished(h: RunningHub) -> bool:
    return await unfinished_events(h) == 0


async def test_an_empty_answer_is_told_in_the_chats_language(tmp_path: Path) -> None:
    blank = FakeOpenAI(answer=lambda msgs: "")
    await blank.start()
    try:
        async with running_hub(settings_for(tmp_path, blank)) as h:
            assert text_of(await web_chat(h.url, "s1", "hello")) == EMPTY_ANSWER
            zh = {"Accept-Language": "zh-CN"}
            assert text_of(await web_chat(h.url, "z1", "你好", headers=zh)) == "模型给出了空回答，请重试或换个说法。"
    finally:
        await blank.stop()
