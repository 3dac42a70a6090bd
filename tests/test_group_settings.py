"""Group settings belong to the group: /persona, /model, /reset and /lang in a group are for the
hub's admins and the group's own admins, where the platform tells (Telegram getChatMember,
OneBot sender.role, Feishu chat owner and managers), unless `[access] group_settings = "anyone"`.

End to end: signed updates into the real app, the platform's answers from its fake.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_feishu import (
    ENCRYPT_KEY,
    GROUP_CHAT_ID,
    OWNER_OPEN_ID,
    USER_OPEN_ID,
    FakeFeishu,
    feishu_toml,
    message_event,
    post_event,
    post_signed,
)
from fake_feishu import Call as FeishuCall
from fake_onebot import FakeOneBot, group_message, plain_text, private_message, text
from fake_telegram import (
    SERVER_ERROR,
    USER,
    FakeTelegram,
    error,
    message_update,
    post_update,
    telegram_toml,
)
from harness import RunningHub, eventually, make_settings, running_hub

from hub.channels.recent import RecentAnswers
from hub.i18n import Lang, texts

REFUSED = (
    "In a group, /%(command)s changes the whole group: only the group's admins and the bot's "
    "admins may use it here. Ask one of them, or use it in a private chat with me."
)
CLEARED = "Memory cleared: this conversation starts afresh."


def refused(command: str, lang: Lang) -> str:
    return texts(lang)(REFUSED, command=command)


async def remembered(h: RunningHub, chat: str) -> None:
    """Give the chat something to remember (again, after a /reset)."""
    await h.hub.memory.add_exchange(chat, user="remember this", assistant="noted")
    assert await h.hub.memory.count(chat) > 0


# --- the short-lived answers ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_recent_answers_share_one_call_keep_it_a_while_and_forget_failures() -> None:
    clock = Clock()
    answers: RecentAnswers[str, bool] = RecentAnswers(ttl_s=60.0, size=2, clock=clock)
    calls: list[str] = []
    gate = asyncio.Event()

    async def lookup() -> bool:
        calls.append("a")
        await gate.wait()
        return True

    burst = [asyncio.create_task(answers.get("a", lookup)) for _ in range(5)]
    await eventually(lambda: len(calls) == 1)
    gate.set()
    assert await asyncio.gather(*burst) == [True] * 5
    assert calls == ["a"]  # five asks, one call
    assert await answers.get("a", lookup) is True and calls == ["a"]
    clock.now += 61
    assert await answers.get("a", lookup) is True and calls == ["a", "a"]  # expired: asked again

    async def failing() -> bool:
        calls.append("b")
        raise OSError("network down")

    for _ in range(2):
        with pytest.raises(OSError):
            await answers.get("b", failing)
    assert calls.count("b") == 2  # a failure is not kept

    async def no() -> bool:
        return False

    await answers.get("c", no)
    await answers.get("d", no)  # size 2: "a", the oldest, is dropped
    assert await answers.get("a", lookup) is True and calls.count("a") == 3


async def test_one_asker_cancelled_does_not_cancel_the_shared_call() -> None:
    answers: RecentAnswers[str, int] = RecentAnswers()
    gate = asyncio.Event()

    async def lookup() -> int:
        await gate.wait()
        return 7

    first = asyncio.create_task(answers.get("k", lookup))
    second = asyncio.create_task(answers.get("k", lookup))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == 7
    with pytest.raises(asyncio.CancelledError):
        await first


# --- Telegram: getChatMember ------------------------------------------------------------------

TG_GROUP = -1001234567890
TG_GROUP_REF = f"telegram:group:{TG_GROUP}"
TG_ADMIN = {"id": 2222222, "is_bot": False, "first_name": "Ada"}
TG_OWNER = {"id": 3333333, "is_bot": False, "first_name": "Olga"}
TG_HUB_ADMIN = {"id": 4444444, "is_bot": False, "first_name": "Hub"}
ANONYMOUS_ADMIN = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    fake.set_member(TG_GROUP, TG_ADMIN["id"], "administrator")
    fake.set_member(TG_GROUP, TG_OWNER["id"], "creator")
    yield fake
    await fake.stop()


def tg_settings(tmp_path: Path, tg: FakeTelegram, extra: str = "") -> str:
    return f'admins = ["telegram:{TG_HUB_ADMIN["id"]}"]\n' + telegram_toml(
        tg.url, public_url="https://hub.example.org", extra=extra
    )


@pytest.fixture
async def tg_hub(tmp_path: Path, tg: FakeTelegram) -> AsyncIterator[RunningHub]:
    async with running_hub(make_settings(tmp_path, tg_settings(tmp_path, tg))) as h:
        yield h


async def tg_say(h: RunningHub, tg: FakeTelegram, text: str, user: dict[str, object], **fields: object) -> str:
    """Send one group message; returns the text of the reply it got."""
    before = len(tg.delivered())
    chat_id = fields.pop("chat_id", TG_GROUP)
    assert isinstance(chat_id, int)
    assert await post_update(h.url, message_update(text, chat_id=chat_id, from_user=user, **fields)) == 200
    await tg.wait_for(lambda: len(tg.delivered()) == before + 1)
    reply = tg.delivered()[-1].params["text"]
    assert isinstance(reply, str)
    return reply


def member_calls(tg: FakeTelegram, user: dict[str, object]) -> int:
    return sum(1 for c in tg.calls("getChatMember") if c.params.get("user_id") == str(user["id"]))


async def test_telegram_a_members_reset_is_refused_and_an_administrators_works(
    tg_hub: RunningHub, tg: FakeTelegram
) -> None:
    await remembered(tg_hub, TG_GROUP_REF)
    assert await tg_say(tg_hub, tg, "/reset", USER) == refused("reset", "en")
    assert await tg_hub.hub.memory.count(TG_GROUP_REF) > 0  # not cleared
    (call,) = tg.calls("getChatMember")
    assert call.params == {"chat_id": str(TG_GROUP), "user_id": str(USER["id"])}

    assert await tg_say(tg_hub, tg, f"/reset@{tg.username}", TG_ADMIN) == CLEARED
    assert await tg_hub.hub.memory.count(TG_GROUP_REF) == 0
    await remembered(tg_hub, TG_GROUP_REF)
    assert await tg_say(tg_hub, tg, "/reset", TG_OWNER) == CLEARED  # the group's creator
    assert await tg_hub.hub.memory.count(TG_GROUP_REF) == 0


async def test_telegram_a_burst_of_commands_asks_once_per_person(tg_hub: RunningHub, tg: FakeTelegram) -> None:
    for _ in range(3):
        assert await tg_say(tg_hub, tg, "/reset", TG_ADMIN) == CLEARED
        assert await tg_say(tg_hub, tg, "/persona", USER) == refused("persona", "en")
    assert member_calls(tg, TG_ADMIN) == 1 and member_calls(tg, USER) == 1


async def test_telegram_the_other_group_settings_follow_the_same_rule(tg_hub: RunningHub, tg: FakeTelegram) -> None:
    for command in ("persona", "model", "lang"):
        assert await tg_say(tg_hub, tg, f"/{command}", USER) == refused(command, "en")
    # /lang for a group admin: switched, and said in the new language.
    assert await tg_say(tg_hub, tg, "/lang zh", TG_ADMIN) == texts("zh")(
        "From now on I answer this chat in %(language)s.", language="中文"
    )
    assert (await tg_hub.hub.chats.get(TG_GROUP_REF)).language == "zh"
    # A member is now refused in the group's new language; /help is for everyone.
    assert await tg_say(tg_hub, tg, "/lang en", USER) == refused("lang", "zh")
    assert (await tg_hub.hub.chats.get(TG_GROUP_REF)).language == "zh"
    # /help is for everyone, and lists to a member only what a member may use here.
    member_help = await tg_say(tg_hub, tg, "/help", USER)
    assert "/help" in member_help and "/jobs" in member_help
    assert not any(f"/{c}" in member_help for c in ("persona", "model", "reset", "lang"))
    admin_help = await tg_say(tg_hub, tg, "/help", TG_ADMIN)
    assert all(f"/{c}" in admin_help for c in ("persona", "model", "reset", "lang"))


async def test_telegram_an_anonymous_admin_speaks_as_the_group_and_needs_no_call(
    tg_hub: RunningHub, tg: FakeTelegram
) -> None:
    await remembered(tg_hub, TG_GROUP_REF)
    sender_chat = {"id": TG_GROUP, "type": "supergroup", "title": "T"}
    assert await tg_say(tg_hub, tg, "/reset", ANONYMOUS_ADMIN, sender_chat=sender_chat) == CLEARED
    assert await tg_hub.hub.memory.count(TG_GROUP_REF) == 0
    assert tg.calls("getChatMember") == []


async def test_telegram_a_failing_getchatmember_refuses_and_the_next_command_asks_again(
    tg_hub: RunningHub, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    await remembered(tg_hub, TG_GROUP_REF)
    tg.script("getChatMember", SERVER_ERROR, error(400, "Bad Request: chat not found"))
    with caplog.at_level("WARNING", logger="hub.telegram"):
        assert await tg_say(tg_hub, tg, "/reset", TG_ADMIN) == refused("reset", "en")
        assert await tg_say(tg_hub, tg, "/reset", TG_ADMIN) == refused("reset", "en")
    assert await tg_hub.hub.memory.count(TG_GROUP_REF) > 0
    failed = [r.getMessage() for r in caplog.records if "telegram_get_chat_member_failed" in r.getMessage()]
    assert len(failed) == 2 and TG_GROUP_REF.split(":")[-1] in failed[0]
    # Failures are not kept: the platform answers again, and the admin is an admin.
    assert await tg_say(tg_hub, tg, "/reset", TG_ADMIN) == CLEARED
    assert member_calls(tg, TG_ADMIN) == 3


async def test_telegram_hub_admins_and_private_chats_need_no_call(tg_hub: RunningHub, tg: FakeTelegram) -> None:
    await remembered(tg_hub, TG_GROUP_REF)
    assert await tg_say(tg_hub, tg, "/reset", TG_HUB_ADMIN) == CLEARED
    assert await tg_hub.hub.memory.count(TG_GROUP_REF) == 0
    private = f"telegram:private:{USER['id']}"
    await remembered(tg_hub, private)
    assert await tg_say(tg_hub, tg, "/reset", USER, chat_id=int(str(USER["id"]))) == CLEARED
    assert await tg_hub.hub.memory.count(private) == 0
    assert tg.calls("getChatMember") == []


async def test_telegram_with_group_settings_anyone_a_member_may(tmp_path: Path, tg: FakeTelegram) -> None:
    toml = tg_settings(tmp_path, tg, extra='[access]\ngroup_settings = "anyone"\n')
    async with running_hub(make_settings(tmp_path, toml)) as h:
        await remembered(h, TG_GROUP_REF)
        assert await tg_say(h, tg, "/reset", USER) == CLEARED
        assert await h.hub.memory.count(TG_GROUP_REF) == 0
    assert tg.calls("getChatMember") == []


# --- OneBot: the message's sender.role ----------------------------------------------------------

OB_TOKEN = "ws-token-123"
OB_BOT = "10001"
OB_GROUP = 30001
OB_GROUP_REF = f"onebot:group:{OB_BOT}/{OB_GROUP}"
OB_HUB_ADMIN = 20009


def onebot_toml(extra: str = "") -> str:
    return f'admins = ["onebot:{OB_HUB_ADMIN}"]\n[onebot]\nenabled = true\naccess_token = "{OB_TOKEN}"\n{extra}'


@pytest.fixture
async def ob() -> AsyncIterator[FakeOneBot]:
    bot = FakeOneBot(token=OB_TOKEN)
    await bot.start()
    yield bot
    await bot.stop()


async def ob_say(h: RunningHub, ob: FakeOneBot, payload: dict[str, object]) -> str:
    before = len(ob.sends())
    await ob.push(OB_BOT, payload)
    await ob.wait_sends(before + 1)
    return plain_text(ob.sends()[-1])


_mids = iter(range(900, 100_000))


def ob_group(user: int, message: str, role: str) -> dict[str, object]:
    return group_message(OB_BOT, OB_GROUP, user, [text(message)], next(_mids), role=role)


async def test_onebot_admin_and_owner_may_a_member_may_not(tmp_path: Path, ob: FakeOneBot) -> None:
    async with running_hub(make_settings(tmp_path, onebot_toml())) as h:
        await ob.connect(h.url, OB_BOT)
        await remembered(h, OB_GROUP_REF)
        # OneBot chats are Chinese by default.
        assert await ob_say(h, ob, ob_group(20001, "/reset", "member")) == refused("reset", "zh")
        assert await ob_say(h, ob, ob_group(20001, "/lang en", "member")) == refused("lang", "zh")
        assert await h.hub.memory.count(OB_GROUP_REF) > 0
        assert await ob_say(h, ob, ob_group(20002, "/reset", "admin")) == texts("zh")(CLEARED)
        assert await h.hub.memory.count(OB_GROUP_REF) == 0
        await remembered(h, OB_GROUP_REF)
        assert await ob_say(h, ob, ob_group(20003, "/reset", "owner")) == texts("zh")(CLEARED)
        assert await h.hub.memory.count(OB_GROUP_REF) == 0
        # A hub admin, whatever the group says of them.
        await remembered(h, OB_GROUP_REF)
        assert await ob_say(h, ob, ob_group(OB_HUB_ADMIN, "/reset", "member")) == texts("zh")(CLEARED)
        assert await h.hub.memory.count(OB_GROUP_REF) == 0
        # A private chat is the sender's own.
        private = f"onebot:private:{OB_BOT}/20001"
        await remembered(h, private)
        assert await ob_say(h, ob, private_message(OB_BOT, 20001, "/reset", next(_mids))) == texts("zh")(CLEARED)
        assert await h.hub.memory.count(private) == 0


async def test_onebot_with_group_settings_anyone_a_member_may(tmp_path: Path, ob: FakeOneBot) -> None:
    toml = onebot_toml() + '[access]\ngroup_settings = "anyone"\n'
    async with running_hub(make_settings(tmp_path, toml)) as h:
        await ob.connect(h.url, OB_BOT)
        await remembered(h, OB_GROUP_REF)
        assert await ob_say(h, ob, ob_group(20001, "/reset", "member")) == texts("zh")(CLEARED)
        assert await h.hub.memory.count(OB_GROUP_REF) == 0


# --- Feishu: the chat's owner and managers ---------------------------------------------------------

MANAGER_OPEN_ID = "ou_manager000000000000000000000000"
FS_HUB_ADMIN = "ou_hubadmin00000000000000000000000"
FS_GROUP_REF = f"feishu:group:{GROUP_CHAT_ID}"


@pytest.fixture
async def fs() -> AsyncIterator[FakeFeishu]:
    fake = FakeFeishu()
    await fake.start()
    fake.chats[GROUP_CHAT_ID] = (OWNER_OPEN_ID, [MANAGER_OPEN_ID])
    yield fake
    await fake.stop()


def fs_toml(fs: FakeFeishu, extra: str = "", *, encrypt_key: str | None = ENCRYPT_KEY) -> str:
    toml = feishu_toml(fs.url, streaming=False, encrypt_key=encrypt_key)
    return f'admins = ["feishu:{FS_HUB_ADMIN}"]\n' + toml + extra


async def fs_say(
    fs: FakeFeishu, h: RunningHub, text: str, sender: str, *, signed: bool = True, chat_type: str = "group"
) -> str:
    before = len(fs.messages())
    event = message_event(text, chat_type=chat_type, sender=sender)
    if signed:
        status, _ = await post_signed(h.url, event)
    else:
        status, _ = await post_event(h.url, json.dumps(event).encode())
    assert status == 200
    await fs.wait_for(lambda: len(fs.messages()) == before + 1)
    reply = fs.messages()[-1].content["text"]
    assert isinstance(reply, str)
    return reply


def chat_info_calls(fs: FakeFeishu) -> list[FeishuCall]:
    return fs.of(f"/im/v1/chats/{GROUP_CHAT_ID}", "GET")


async def test_feishu_owner_and_managers_may_others_may_not(tmp_path: Path, fs: FakeFeishu) -> None:
    async with running_hub(make_settings(tmp_path, fs_toml(fs))) as h:
        await remembered(h, FS_GROUP_REF)
        assert await fs_say(fs, h, "/reset", USER_OPEN_ID) == refused("reset", "zh")
        assert await fs_say(fs, h, "/model", USER_OPEN_ID) == refused("model", "zh")
        assert await h.hub.memory.count(FS_GROUP_REF) > 0
        assert await fs_say(fs, h, "/reset", OWNER_OPEN_ID) == texts("zh")(CLEARED)
        assert await h.hub.memory.count(FS_GROUP_REF) == 0
        await remembered(h, FS_GROUP_REF)
        assert await fs_say(fs, h, "/reset", MANAGER_OPEN_ID) == texts("zh")(CLEARED)
        assert await h.hub.memory.count(FS_GROUP_REF) == 0
        # One look at the chat served every command in it; asked by open_id, as senders are named.
        (call,) = chat_info_calls(fs)
        assert call.query == {"user_id_type": "open_id"}
        # A hub admin, without asking.
        await remembered(h, FS_GROUP_REF)
        assert await fs_say(fs, h, "/reset", FS_HUB_ADMIN) == texts("zh")(CLEARED)
        assert len(chat_info_calls(fs)) == 1
        # A private chat is the sender's own.
        private = f"feishu:private:{USER_OPEN_ID}"
        await remembered(h, private)
        assert await fs_say(fs, h, "/reset", USER_OPEN_ID, chat_type="p2p") == texts("zh")(CLEARED)
        assert await h.hub.memory.count(private) == 0
        assert len(chat_info_calls(fs)) == 1


async def test_feishu_without_the_permission_to_read_the_chat_only_hub_admins_may(
    tmp_path: Path, fs: FakeFeishu, caplog: pytest.LogCaptureFixture
) -> None:
    fs.deny_chat_info = True
    async with running_hub(make_settings(tmp_path, fs_toml(fs))) as h:
        await remembered(h, FS_GROUP_REF)
        with caplog.at_level("WARNING", logger="hub.feishu"):
            assert await fs_say(fs, h, "/reset", OWNER_OPEN_ID) == refused("reset", "zh")
        assert any("feishu_chat_admins_failed" in r.getMessage() for r in caplog.records)
        assert await h.hub.memory.count(FS_GROUP_REF) > 0
        fs.deny_chat_info = False  # a failure is not kept
        assert await fs_say(fs, h, "/reset", OWNER_OPEN_ID) == texts("zh")(CLEARED)
        assert len(chat_info_calls(fs)) == 2


async def test_feishu_an_unsigned_body_carries_no_group_admin_rights(tmp_path: Path, fs: FakeFeishu) -> None:
    # Without an encrypt_key nothing signs the body: anyone who saw one could write it as the owner.
    async with running_hub(make_settings(tmp_path, fs_toml(fs, encrypt_key=None))) as h:
        await remembered(h, FS_GROUP_REF)
        assert await fs_say(fs, h, "/reset", OWNER_OPEN_ID, signed=False) == refused("reset", "zh")
        assert await h.hub.memory.count(FS_GROUP_REF) > 0
        assert chat_info_calls(fs) == []


async def test_feishu_with_group_settings_anyone_a_member_may(tmp_path: Path, fs: FakeFeishu) -> None:
    toml = fs_toml(fs, extra='[access]\ngroup_settings = "anyone"\n')
    async with running_hub(make_settings(tmp_path, toml)) as h:
        await remembered(h, FS_GROUP_REF)
        assert await fs_say(fs, h, "/reset", USER_OPEN_ID) == texts("zh")(CLEARED)
        assert await h.hub.memory.count(FS_GROUP_REF) == 0
        assert chat_info_calls(fs) == []
