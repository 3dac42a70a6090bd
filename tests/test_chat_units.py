"""The pieces of the chat skill: the persona prompt, the token estimate, memory and personas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import pg_database
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from hub.events import ChatRef, Event, Image, Message, User
from hub.i18n.language import choose
from hub.routing.context import Context, ReplyStream
from hub.settings import PersonaSettings
from hub.skills.chat import ChatSkill
from hub.skills.prompt import build_messages, opening, reply_reserve, system_prompt, tokens_of
from hub.storage.chats import ChatSettings
from hub.storage.db import Database
from hub.storage.memory import MemoryRepo, Turn, estimate_tokens
from hub.storage.migrate import migrate
from hub.storage.models import memory
from hub.storage.personas import Persona, PersonaRepo

SEED = Persona(
    name="小美",
    appearance="长发",
    personality="活泼",
    background="大学生",
    style="俏皮",
    knowledge="喜欢天文",
    greeting="嗨～我是小美！",
    language="zh",
)


# --- the prompt -------------------------------------------------------------------------------


def test_the_seed_injection_shape_in_chinese() -> None:
    assert system_prompt(SEED) == (
        "你正在扮演以下角色，必须完全以这个身份说话。\n"
        "【角色设定】姓名:小美 外貌:长发 性格:活泼 背景故事:大学生 对话风格:俏皮\n"
        "【知识库】喜欢天文"
    )
    assert opening(SEED)[1:] == [
        {"role": "user", "content": "从现在开始，你是小美，不是其他任何AI。请以这个身份和我对话。"},
        {"role": "assistant", "content": "嗨～我是小美！"},
    ]


def test_english_frame_empty_fields_and_no_restatement() -> None:
    p = Persona(name="Ada", personality="precise", style="terse", language="en", restate=False)
    assert opening(p) == [
        {
            "role": "system",
            "content": "You are playing the following character and must speak entirely as them.\n"
            "[Character] Name: Ada Personality: precise Style: terse",
        }
    ]


def test_a_restatement_without_a_greeting_is_still_answered() -> None:
    p = Persona(name="Ada", language="en")
    assert [m["role"] for m in opening(p)] == ["system", "user", "assistant"]
    assert opening(p)[2]["content"] == "Understood. I am Ada."


def test_plain_assistant_and_groups() -> None:
    assert system_prompt(None) is None and opening(None) == []
    assert opening(None, group=True) == [
        {"role": "system", "content": "This is a group chat: each user message starts with the speaker's name."}
    ]
    assert system_prompt(SEED, group=True).endswith("\n这是一个群聊：每条用户消息以说话人的名字开头。")  # type: ignore[union-attr]


def test_messages_alternate_after_the_opening() -> None:
    history = [Turn("user", "a", 5), Turn("assistant", "b", 5)]
    msgs = build_messages(opening(SEED), history, "c")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1] == {"role": "user", "content": "c"}


def test_token_estimate_and_reserve() -> None:
    assert estimate_tokens("") == 4
    assert estimate_tokens("hello world") == 4 + 4  # 11 ASCII characters at 3 a token, rounded up
    assert estimate_tokens("你好世界") == 4 + 4
    assert estimate_tokens("hi 你好") == 1 + 2 + 4
    # Errs high against real tokenizers: English prose runs about 4 characters a token.
    prose = "The quick brown fox jumps over the lazy dog. " * 20
    assert estimate_tokens(prose) >= len(prose) / 4
    assert tokens_of([{"role": "user", "content": "hello world"}]) == 8
    assert reply_reserve(8192, None) == 1024 and reply_reserve(600, None) == 150
    assert reply_reserve(262144, 4096) == 4096 and reply_reserve(1000, 4096) == 500


# --- memory ------------------------------------------------------------------------------------


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    await migrate(database)
    await database.start()
    yield database
    await database.close()


async def test_recent_keeps_the_newest_whole_exchanges_within_budget(db: Database) -> None:
    repo = MemoryRepo(db)
    for i in range(5):
        await repo.add_exchange("c1", user=f"question {i}", assistant=f"answer {i}", event_id=f"e{i}")
    await repo.add_exchange("c2", user="elsewhere", assistant="other chat", event_id="x")
    every = await repo.recent("c1", 10_000)
    assert [t.content for t in every] == [s for i in range(5) for s in (f"question {i}", f"answer {i}")]
    assert [t.role for t in every] == ["user", "assistant"] * 5
    pair = every[-2].tokens + every[-1].tokens
    two = await repo.recent("c1", 2 * pair)
    assert [t.content for t in two] == ["question 3", "answer 3", "question 4", "answer 4"]
    assert await repo.recent("c1", 2 * pair - 1) == every[-2:]
    assert await repo.recent("c1", pair - 1) == []
    assert await repo.count("c1") == 10


@pytest.mark.postgres
async def test_memory_on_postgresql() -> None:
    async with pg_database() as url:
        database = Database(url)
        await migrate(database)
        await database.start()
        try:
            repo = MemoryRepo(database, keep_rows=4)
            for i in range(3):
                await repo.add_exchange("c", user=f"u{i}", assistant=f"a{i}", name="Ann", event_id=str(i))
            await repo.add_exchange("c", user="u2", assistant="again", event_id="2")
            assert [t.content for t in await repo.recent("c", 1000)] == ["Ann: u1", "a1", "Ann: u2", "a2"]
            await PersonaRepo(database).sync([conf("Ann")])
            assert [p.name for p in await PersonaRepo(database).list()] == ["Ann"]
        finally:
            await database.close()


async def test_group_turns_carry_the_speaker(db: Database) -> None:
    repo = MemoryRepo(db)
    await repo.add_exchange("g", user="hi", assistant="hello Ann", name="Ann", event_id="1")
    turns = await repo.recent("g", 1000)
    assert turns[0] == Turn("user", "Ann: hi", estimate_tokens("Ann: hi"))


async def test_the_same_event_is_stored_once(db: Database) -> None:
    repo = MemoryRepo(db)
    await repo.add_exchange("c", user="q", assistant="a", event_id="e1")
    await repo.add_exchange("c", user="q", assistant="a (re-handled)", event_id="e1")
    assert [t.content for t in await repo.recent("c", 1000)] == ["q", "a"]


async def test_paging_pruning_and_clearing(db: Database) -> None:
    repo = MemoryRepo(db, keep_rows=300)
    for i in range(200):  # 400 rows: paging splits pairs, pruning keeps the newest 300
        await repo.add_exchange("c", user=f"u{i}", assistant=f"a{i}", event_id=str(i))
    turns = await repo.recent("c", 10**9)
    assert len(turns) == 300
    assert turns[0].content == "u50" and turns[-1].content == "a199"
    assert [t.role for t in turns] == ["user", "assistant"] * 150
    assert await repo.clear("c") == 300
    assert await repo.recent("c", 10**9) == []


async def test_orphan_turns_are_skipped(db: Database) -> None:
    repo = MemoryRepo(db)
    await repo.add_exchange("c", user="q1", assistant="a1", event_id="1")
    async with db.engine.begin() as conn:  # a turn whose partner is gone (e.g. edited by hand)
        await conn.execute(
            memory.insert().values(
                chat="c", role="user", content="lonely", tokens=5, event_id="2", created_at=func.now()
            )
        )
    await repo.add_exchange("c", user="q3", assistant="a3", event_id="3")
    assert [t.content for t in await repo.recent("c", 1000)] == ["q1", "a1", "q3", "a3"]
    async with db.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(memory))).scalar() == 5


async def test_a_sole_user_reads_what_the_database_holds_without_asking_it(db: Database) -> None:
    # The same operations on two repositories, one keeping the chats in memory: every read
    # answers the same, and the cached one stops querying once it holds a chat.
    plain, cached = MemoryRepo(db, keep_rows=40), MemoryRepo(db, keep_rows=40, sole_user=True)
    queries = 0

    def count(*_: object) -> None:
        nonlocal queries
        queries += 1

    sa_event.listen(db.engine.sync_engine, "before_cursor_execute", count)

    async def same(chat: str, budget: int) -> list[Turn]:
        want = await plain.recent(chat, budget)
        assert await cached.recent(chat, budget) == want
        return want

    assert await same("c", 1000) == []
    for i in range(30):  # past keep_rows: the database prunes, the copy follows
        await cached.add_exchange("c", user=f"question {i}", assistant=f"answer {i}", name="Ann", event_id=str(i))
        await same("c", 1000)
    await cached.add_exchange("c", user="question 29", assistant="again", event_id="29")  # stored once
    pair = estimate_tokens("Ann: question 9") + estimate_tokens("answer 9")
    for budget in (0, pair - 1, pair, 3 * pair, 10**6, 2 * pair):
        await same("c", budget)
    assert len(await same("c", 10**6)) == 40
    before = queries
    for budget in (0, pair, 3 * pair, 10**6):
        await cached.recent("c", budget)
    await cached.add_exchange("c", user="one more", assistant="reply", event_id="30")
    assert (await cached.recent("c", 10**6))[-2:] == [Turn("user", "one more", 7), Turn("assistant", "reply", 6)]
    assert queries - before == 3  # the two turns' inserts and the pruning: no read
    assert await cached.clear("c") == 40
    assert await same("c", 1000) == []
    await cached.add_exchange("c", user="fresh", assistant="start", event_id="31")
    assert [t.content for t in await same("c", 1000)] == ["fresh", "start"]


async def test_a_sole_users_copy_is_bounded(db: Database) -> None:
    repo = MemoryRepo(db, sole_user=True, cache_tokens=100)
    for chat in ("a", "b", "c", "d"):
        await repo.recent(chat, 25 if chat == "d" else 1000)
        for i in range(5):  # 10 tokens an exchange
            await repo.add_exchange(chat, user=f"q{i}", assistant=f"a{i}", event_id=str(i))
    # The least recently used chats went first; a chat asked for 25 tokens keeps 30.
    assert list(repo._cache) == ["c", "d"] and repo._cache["d"].tokens == 30
    assert [t.content for t in await repo.recent("d", 25)] == ["q3", "a3", "q4", "a4"]
    assert len(await repo.recent("d", 1000)) == 10  # more than it kept: from the database
    assert len(await repo.recent("a", 1000)) == 10


# --- personas ----------------------------------------------------------------------------------


def conf(name: str, **kw: object) -> PersonaSettings:
    return PersonaSettings.model_validate({"name": name, **kw})


async def test_personas_sync_from_config_and_keep_admin_ones(db: Database) -> None:
    repo = PersonaRepo(db, ttl_s=0)
    await repo.sync([conf("Ann", greeting="hi", default=True), conf("Bob", language="en")])
    await repo.add("Cid", {"style": "calm", "restate": "false"})
    assert [(p.name, p.source) for p in await repo.list()] == [("Ann", "config"), ("Bob", "config"), ("Cid", "admin")]
    cid = await repo.get("cid")
    assert cid is not None and cid.name == "Cid" and cid.restate is False and cid.style == "calm"
    assert (await repo.default()) == Persona(name="Ann", greeting="hi", default=True)
    # The next start: Bob left the file, Cid is now in it too (the file wins).
    await repo.sync([conf("Ann", greeting="hello", default=True), conf("Cid", style="loud")])
    assert [(p.name, p.source) for p in await repo.list()] == [("Ann", "config"), ("Cid", "config")]
    assert (await repo.get("Ann")).greeting == "hello"  # type: ignore[union-attr]
    assert (await repo.get("Cid")).style == "loud"  # type: ignore[union-attr]


async def test_adding_validates_and_a_new_default_replaces_the_old(db: Database) -> None:
    repo = PersonaRepo(db)
    await repo.sync([conf("Ann", default=True)])
    with pytest.raises(ValueError, match="language"):
        await repo.add("Eve", {"language": "fr"})
    with pytest.raises(ValueError, match="unknown persona fields: mood"):
        await repo.add("Eve", {"mood": "grim"})
    with pytest.raises(ValueError, match="name"):
        await repo.add(" ", {})
    await repo.add("Eve", {"default": True, "language": "en"})
    assert (await repo.default()).name == "Eve"  # type: ignore[union-attr]
    assert [p.name for p in await repo.list() if p.default] == ["Eve"]
    assert await repo.remove("eve") is True
    assert await repo.remove("eve") is False
    assert await repo.default() is None


async def test_another_process_sees_a_change_within_the_ttl(db: Database) -> None:
    mine, theirs = PersonaRepo(db, ttl_s=0.05), PersonaRepo(db, ttl_s=0.05)
    assert await theirs.list() == []
    await mine.add("Zed", {})
    await asyncio.sleep(0.06)
    assert [p.name for p in await theirs.list()] == ["Zed"]


# --- what the chat skill says itself -----------------------------------------------------------


class _Said:
    """A replier that keeps what was said."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def reply(self, message: Message, *, quote: bool = True) -> None:
        self.texts.append(message.text)

    def stream(self) -> ReplyStream:
        raise AssertionError("no stream for a message it cannot read")

    async def action(self, kind: str = "typing") -> None:
        pass


@pytest.mark.parametrize(
    ("channel", "said"),
    [
        ("qq", "我目前只能看懂文字：请用文字发送你的消息。"),
        ("web", "I can only read text for now: please write your message."),
    ],
)
async def test_a_picture_alone_is_answered_in_the_chats_language(channel: str, said: str) -> None:
    event = Event(
        "e1", channel, ChatRef(channel, "private", "u1"), User(channel, "u1"), Message((Image(url="https://x/y.png"),))
    )
    replier = _Said()
    lang = choose(chat=None, persona=None, bot="auto", channel=channel)
    ctx = Context(event=event, command=None, chat=ChatSettings("c"), is_admin=False, replier=replier, lang=lang)
    skill = ChatSkill(None, None, None, None)  # type: ignore[arg-type]  # never reached for a picture alone
    await skill(ctx)
    assert replier.texts == [said]
