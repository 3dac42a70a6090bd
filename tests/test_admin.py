"""/admin end to end: over the web chat (with the tests' own platform for groups and pairing), and
over Telegram's fake.

Every subcommand runs first as a non-admin (refused, audited, no effect), then as an admin
(works, audited, and the effect shows the way a user would notice it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from babel.messages.pofile import read_po
from fake_providers import HUNYUAN_KEY, HUNYUAN_KEY_ID, FakeHunyuan
from fake_telegram import FakeTelegram, command_entity, message_update, post_update, telegram_toml
from fakechan import SECRET, FakeChannel
from harness import FakeServer, RunningHub, eventually, make_settings, running_hub, sse_items, text_of, web_chat

from hub.cli import main as cli_main
from hub.events import ChatRef, Event, Message, Text, User
from hub.i18n import texts
from hub.i18n.texts import LOCALE_DIR
from hub.skills.admin.skill import PRIVATE_NOTE
from hub.storage.jobs import Job

REFUSAL = "Sorry, that command is for the bot's admins only."
CJK = re.compile(r"[\u4e00-\u9fff]")


def _english_sentences() -> list[str]:
    """The pieces of every English text between its placeholders that are a phrase of their own
    (two words or more): none may show in a Chinese answer. Usage lines are what the admin
    types, so they stay."""
    with (LOCALE_DIR / "en" / "LC_MESSAGES" / "hub.po").open("rb") as f:
        catalog = read_po(f)
    found = set()
    for msg in catalog:
        for msgid in (msg.id,) if isinstance(msg.id, str) else msg.id:
            if not msgid or msgid.startswith("/"):
                continue
            for piece in re.split(r"%\(\w+\)s", msgid):
                piece = piece.strip(" .,:;()—→·'\n")
                if len(piece) >= 8 and " " in piece:
                    found.add(piece)
    return sorted(found)


ENGLISH = _english_sentences()


def assert_chinese(answer: str) -> None:
    assert CJK.search(answer), answer
    said = re.sub(r"'[^'\n]*'", "''", answer)  # a job's prompt, quoted, is the user's words
    english = [sentence for sentence in ENGLISH if sentence in said]
    assert not english, (english, answer)


def is_refusal(answer: str, env: Any, name: str) -> bool:
    """The admins-only refusal, saying how this person would become an admin on their platform."""
    user = env.user(name)
    if user.startswith("web:"):
        return answer.startswith(REFUSAL) and "[web] token" in answer and "token_is_admin = true" in answer
    return answer.startswith(REFUSAL) and answer.endswith(f"hub admin add {user}")


VIDEO = f"""
[providers.hunyuan]
base_url = "{{hunyuan}}"
api_key = "{HUNYUAN_KEY}"
key_id = "{HUNYUAN_KEY_ID}"
poll_interval_s = 0.1
timeout_s = 60
"""

MODELS = """
[[models]]
name = "m1"
base_url = "http://127.0.0.1:9/v1"
model = "one"

[[models]]
name = "m2"
base_url = "http://127.0.0.1:9/v1"
model = "two"
"""

# Private chats need an admin's approval everywhere but in the web chat, which is guarded at
# its door (loopback or a token).
POLICY = """
[access]
private = "pairing"
"""

# A web user is whoever names the session, so web admin rights come from the web token.
WEB_TOKEN = "web-admin-token"
WEB_AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}
TOKEN_ADMIN = f"""
[web]
token = "{WEB_TOKEN}"
token_is_admin = true
"""
# An admin by the configuration, on the tests' own platform.
OWNER = "fake:owner"
WEB_ADMIN_HUB = f'admins = ["{OWNER}"]\n{MODELS}{VIDEO}{POLICY}{TOKEN_ADMIN}'


class Env:
    """A running hub and the people in the tests, named; each channel gives them its own ids.

    `say` talks in the person's private chat, `say_in` in a group; both return the replies
    the hub sent for that message ("" when none). The `stranger*` people are kept out by the
    pairing policy; everyone else in these tests has been let in before.
    """

    channel = ""
    admin_name = "admin1"

    def __init__(self, h: RunningHub, hunyuan: FakeHunyuan) -> None:
        self.h = h
        self.hunyuan = hunyuan
        self._fresh = itertools.count(1)

    @property
    def hub(self) -> Any:
        return self.h.hub

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self._fresh)}"

    # --- names ------------------------------------------------------------------------------

    def user(self, name: str) -> str:
        raise NotImplementedError

    def private(self, name: str) -> str:
        raise NotImplementedError

    def group(self, name: str) -> str:
        raise NotImplementedError

    def stranger_user(self, name: str) -> str:
        raise NotImplementedError

    def stranger_chat(self, name: str) -> str:
        raise NotImplementedError

    def names(self, values: dict[str, str]) -> _Names:
        return _Names(self, values)

    # --- talking ----------------------------------------------------------------------------

    async def say(self, name: str, text: str) -> str:
        raise NotImplementedError

    async def say_in(self, group: str, name: str, text: str) -> str:
        raise NotImplementedError

    async def stranger(self, name: str, text: str) -> str:
        """Say something as a person the pairing policy keeps out until approved."""
        raise NotImplementedError

    async def delivered(self, chat: str, text: str) -> int:
        """Wait until `text` reached `chat` as a later message; how many times it did."""
        raise NotImplementedError

    async def admin(self, text: str) -> str:
        return await self.say(self.admin_name, text)

    async def video(self, name: str, prompt: str) -> tuple[str, str | None]:
        """/video from a person: the answer and the job id it names, if any."""
        answer = await self.say(name, f"/video {prompt}")
        m = re.search(r"#([0-9a-f]{4,8})", answer)
        return answer, (m.group(1) if m else None)

    # --- looking ----------------------------------------------------------------------------

    async def job(self, job_id: str) -> Job:
        job = await self.hub.jobs.get(job_id)
        assert job is not None
        return job

    async def rows(self, origin: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows, oldest first, optionally of one origin."""
        return [r for r in await self.hub.outbox_repo.all_rows() if origin is None or r["origin"] == origin]

    async def last_audit(self) -> Any:
        entries = await self.hub.audit.recent(1)
        return entries[0] if entries else None

    async def replies_to(self, channel: str, event_id: str) -> str:
        """Once the event is handled: the texts of the replies it queued, after they were sent."""

        async def handled() -> bool:
            row = await self.hub.inbox.get(channel, event_id)
            return row is not None and row["status"] == "done"

        await eventually(handled)
        prefix = f"{channel}:{event_id}:"

        async def mine() -> list[dict[str, Any]]:
            return [r for r in await self.rows() if (r["idempotency_key"] or "").startswith(prefix)]

        async def sent() -> bool:
            return all(r["status"] == "sent" for r in await mine())

        await eventually(sent)
        return "\n".join(_text(r["message"]) for r in await mine())


def _text(segments: list[dict[str, Any]]) -> str:
    return "".join(s.get("text", "") for s in segments if s.get("type") == "text")


class _Names(dict[str, str]):
    """Fills `{u_victim}` (a user), `{p_b1}` (a private chat), `{g_g1}` (a group), `{s_x}` (a
    stranger under pairing) and the values a case prepared."""

    def __init__(self, env: Env, values: dict[str, str]) -> None:
        super().__init__(values)
        self._env = env

    def __missing__(self, key: str) -> str:
        kind, _, name = key.partition("_")
        env = self._env
        if kind == "u":
            return env.user(name)
        if kind == "p":
            return env.private(name)
        if kind == "g":
            return env.group(name)
        if kind == "s":
            return env.stranger_user(name)
        raise KeyError(key)


class WebEnv(Env):
    """The admin uses the web chat, an admin by carrying the web token (`token_is_admin`);
    everyone else, groups and strangers are on the tests' own platform (with the token every
    web user would be an admin)."""

    channel = "web"

    def __init__(self, h: RunningHub, hunyuan: FakeHunyuan, platform: FakeServer) -> None:
        super().__init__(h, hunyuan)
        self.platform = platform
        self._ids = itertools.count(1)

    def user(self, name: str) -> str:
        return f"web:{name}" if name == self.admin_name else f"fake:{name}"

    def private(self, name: str) -> str:
        return f"web:private:{name}" if name == self.admin_name else f"fake:private:{name}"

    def group(self, name: str) -> str:
        return f"fake:group:{name}"

    def stranger_user(self, name: str) -> str:
        return f"fake:{name}"

    def stranger_chat(self, name: str) -> str:
        return f"fake:private:{name}"

    async def say(self, name: str, text: str) -> str:
        if name == self.admin_name:
            return await self.web(name, text)
        # Let in before, as the pairing policy would after an admin's approval.
        await self.hub.users.set(self.user(name), allowed=True)
        return await self.fake(name, text)

    async def web(self, session: str, text: str) -> str:
        """Over the web chat, with the web token (ignored by a hub that has none)."""
        return text_of(await web_chat(self.h.url, session, text, headers=WEB_AUTH))

    async def say_in(self, group: str, name: str, text: str) -> str:
        return await self.fake(name, text, chat=group, group=True)

    async def stranger(self, name: str, text: str) -> str:
        return await self.fake(name, text)

    async def fake(self, user: str, text: str, *, chat: str | None = None, group: bool = False) -> str:
        event_id = f"ev{next(self._ids)}"
        body = {"id": event_id, "user": user, "text": text, "chat": chat or user, "group": group}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.h.url}/webhooks/fake", data=json.dumps(body), headers={"X-Fake-Secret": SECRET}
            ) as resp:
                assert resp.status == 200, await resp.text()
        answer = await self.replies_to("fake", event_id)
        assert "\n".join(self.sent_for(event_id)) == answer  # what was queued reached the platform
        return answer

    def sent_for(self, event_id: str) -> list[str]:
        return [c.json["text"] for c in self.platform.calls("/send") if c.json.get("quote") == event_id]

    def sent_to(self, chat: str) -> list[str]:
        """What the test platform received for one chat."""
        return [c.json["text"] for c in self.platform.calls("/send") if c.json["chat"] == chat]

    async def delivered(self, chat: str, text: str) -> int:
        if chat.startswith("web:"):
            return (await web_messages(self.h.url, ChatRef.parse(chat).chat_id)).count(text)
        await self.platform.wait_for(lambda: text in self.sent_to(chat))
        return self.sent_to(chat).count(text)


class TelegramEnv(Env):
    """Everyone is on Telegram: ids are numbers, groups supergroups."""

    channel = "telegram"

    def __init__(self, h: RunningHub, hunyuan: FakeHunyuan, tg: FakeTelegram) -> None:
        super().__init__(h, hunyuan)
        self.tg = tg
        self._user_ids: dict[str, int] = {}
        self._group_ids: dict[str, int] = {}
        self._approved: set[str] = set()

    def _uid(self, name: str) -> int:
        return self._user_ids.setdefault(name, 700_001 + len(self._user_ids))

    def _gid(self, name: str) -> int:
        return self._group_ids.setdefault(name, -1_007_000_000_001 - len(self._group_ids))

    def user(self, name: str) -> str:
        return f"telegram:{self._uid(name)}"

    def private(self, name: str) -> str:
        return f"telegram:private:{self._uid(name)}"

    def group(self, name: str) -> str:
        return f"telegram:group:{self._gid(name)}"

    def stranger_user(self, name: str) -> str:
        return self.user(name)

    def stranger_chat(self, name: str) -> str:
        return self.private(name)

    async def _post(self, name: str, chat_id: int, text: str) -> str:
        sender = {"id": self._uid(name), "is_bot": False, "first_name": name.capitalize()}
        extra = {"entities": command_entity(text)} if text.startswith("/") else {}
        update = message_update(text, chat_id=chat_id, from_user=sender, **extra)
        assert await post_update(self.h.url, update) == 200
        return await self.replies_to("telegram", str(update["update_id"]))

    async def say(self, name: str, text: str) -> str:
        if name != self.admin_name and not name.startswith("stranger") and name not in self._approved:
            # Let in before, as `/admin approve` does (the pairing flow has a test of its own).
            await self.hub.users.set(self.user(name), allowed=True)
            self._approved.add(name)
        return await self._post(name, self._uid(name), text)

    async def say_in(self, group: str, name: str, text: str) -> str:
        return await self._post(name, self._gid(group), text)

    async def stranger(self, name: str, text: str) -> str:
        return await self._post(name, self._uid(name), text)

    def sent_to(self, chat: str) -> list[str]:
        chat_id = ChatRef.parse(chat).chat_id
        return [c.params.get("text", "") for c in self.tg.delivered() if str(c.params.get("chat_id")) == chat_id]

    async def delivered(self, chat: str, text: str) -> int:
        await self.tg.wait_for(lambda: text in self.sent_to(chat))
        return self.sent_to(chat).count(text)


async def web_messages(url: str, session: str, n: int = 1) -> list[str]:
    """The later messages a web session receives on its event stream."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/web/events", params={"session": session}, headers=WEB_AUTH) as resp:
            items = await sse_items(resp, until_done=n, timeout=10)
    return [i["content"] for i in items if isinstance(i, dict) and "content" in i]


@asynccontextmanager
async def started(tmp_path: Path, toml: str) -> AsyncIterator[WebEnv]:
    """A hub with the web chat and the test platform (`fake`), and a fake Hunyuan for /video."""
    platform = FakeServer()
    counter = itertools.count(1)
    platform.on("POST", "/send", lambda r: {"ok": True, "message_id": str(next(counter))})
    await platform.start()
    hunyuan = FakeHunyuan(queued_s=0.1, running_s=0.1)
    await hunyuan.start()
    channel = FakeChannel(platform.url)
    settings = make_settings(tmp_path, toml.replace("{hunyuan}", hunyuan.url))
    try:
        async with running_hub(settings, extra_channels=[channel]) as h:
            channel.bind(h.hub.dispatcher)
            yield WebEnv(h, hunyuan, platform)
    finally:
        await hunyuan.stop()
        await platform.stop()


@asynccontextmanager
async def started_telegram(tmp_path: Path, toml: str) -> AsyncIterator[TelegramEnv]:
    """A hub on Telegram's fake (webhook mode), and a fake Hunyuan for /video."""
    tg = FakeTelegram()
    await tg.start()
    hunyuan = FakeHunyuan(queued_s=0.1, running_s=0.1)
    await hunyuan.start()
    settings = make_settings(tmp_path, toml.replace("{hunyuan}", hunyuan.url) + "\n" + telegram_toml(tg.url))
    try:
        async with running_hub(settings) as h:
            yield TelegramEnv(h, hunyuan, tg)
    finally:
        await hunyuan.stop()
        await tg.stop()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WebEnv]:
    async with started(tmp_path, WEB_ADMIN_HUB) as e:
        yield e


@pytest.fixture(params=["web", "telegram"])
async def any_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """The same hub over the web chat, or over Telegram."""
    if request.param == "web":
        async with started(tmp_path, WEB_ADMIN_HUB) as e:
            yield e
        return
    admin = "telegram:700001"  # the first person a TelegramEnv names is its admin
    async with started_telegram(tmp_path, f'admins = ["{admin}"]\n{MODELS}{VIDEO}{POLICY}') as t:
        assert t.user(t.admin_name) == admin
        yield t


# --- the table: each subcommand, its answer, and how its effect shows ----------------------------

Prepare = Callable[[Env], Awaitable[dict[str, str]]]
Effect = Callable[[Env, dict[str, str]], Awaitable[bool]]


async def _nothing(env: Env) -> dict[str, str]:
    return {}


async def _a_running_job(env: Env) -> dict[str, str]:
    answer, job_id = await env.video("maker", "a piglet singing [never]")
    assert job_id is not None, answer

    async def running() -> bool:
        return (await env.job(job_id)).state == "running"

    await eventually(running)
    return {"job": job_id}


async def _a_failed_job(env: Env) -> dict[str, str]:
    answer, job_id = await env.video("maker", "a piglet singing [fail]")
    assert job_id is not None, answer

    async def failed() -> bool:
        return (await env.job(job_id)).state == "failed"

    await eventually(failed)
    return {"job": job_id}


async def _cancelled(env: Env, v: dict[str, str]) -> bool:
    if (await env.job(v["job"])).state != "cancelled":
        return False
    # The job's owner hears of it too.
    return await env.delivered(env.private("maker"), f"An admin cancelled your job #{v['job']}.") == 1


async def _restarted(env: Env, v: dict[str, str]) -> bool:
    job = await env.job(v["job"])
    if job.retries != 1:
        return False

    # Made again: the provider gets the prompt a second time (and it fails again, as its prompt
    # says, so the job's state alone would race with the fake).
    async def submitted_twice() -> bool:
        prompts = [c.json.get("prompt") for c in env.hunyuan.server.calls("/v1/api/video/submit")]
        return prompts.count(job.prompt) == 2

    await eventually(submitted_twice)
    # The job's owner hears of it too.
    notice = f"An admin restarted your job #{v['job']}; it comes here when it is done."
    return await env.delivered(env.private("maker"), notice) == 1


async def _victim_heard_first(env: Env) -> dict[str, str]:
    assert "Commands:" in await env.say("victim", "/help")
    return {}


async def _victim_ignored(env: Env, v: dict[str, str]) -> bool:
    return await env.say("victim", "/help") == ""


async def _ban_victim(env: Env) -> dict[str, str]:
    await env.hub.users.set(env.user("victim"), banned=True)
    env.hub.people.invalidate()
    assert await env.say("victim", "/help") == ""
    return {}


async def _victim_heard(env: Env, v: dict[str, str]) -> bool:
    return "Commands:" in await env.say("victim", "/help")


async def _third_video_stopped(env: Env, v: dict[str, str]) -> bool:
    """A fresh user asks for three videos: the quota stops the third, naming the reset time."""
    who = env.fresh("viewer")
    answers = [(await env.video(who, f"clip {i} [never]"))[0] for i in range(3)]
    if "queued as #" not in answers[0] or "queued as #" not in answers[1]:
        return False
    third = answers[2]
    return "queued as" not in third and re.search(r"resets at \d{4}-\d\d-\d\d 00:00 UTC", third) is not None


async def _u9_first_video(env: Env) -> dict[str, str]:
    answer, _ = await env.video("u9", "a first clip [never]")
    assert "queued as #" in answer
    return {}


async def _u9_stopped(env: Env, v: dict[str, str]) -> bool:
    return "00:00 UTC" in (await env.video("u9", f"another clip {env.fresh('')} [never]"))[0]


async def _groups_used(env: Env) -> dict[str, str]:
    for g in ("g1", "g2"):
        assert "queued as #" in await env.say_in(g, "member", f"/video a cat in {g} [never]")
    return {}


async def _video_off_in_g1_only(env: Env, v: dict[str, str]) -> bool:
    n = env.fresh("")
    in_g1 = await env.say_in("g1", "member", f"/video cat {n} [never]")
    in_g2 = await env.say_in("g2", "member", f"/video dog {n} [never]")
    return "switched off" in in_g1 and "queued as #" in in_g2


async def _video_off_in_g1(env: Env) -> dict[str, str]:
    await env.hub.chats.set_skill(env.group("g1"), "video", False)
    assert "switched off" in await env.say_in("g1", "member", "/video x [never]")
    return {}


async def _video_on_in_g1(env: Env, v: dict[str, str]) -> bool:
    return "queued as #" in await env.say_in("g1", "member", f"/video y{env.fresh('')} [never]")


async def _mei_exists(env: Env, v: dict[str, str]) -> bool:
    if "This chat now talks to Mei." not in await env.say(env.fresh("fan"), "/persona Mei"):
        return False
    found = await env.hub.personas.get("Mei")
    return found is not None and found.style == "warm, brief" and found.source == "admin"


async def _add_mei(env: Env) -> dict[str, str]:
    await env.hub.personas.add("Mei", {"style": "warm, brief"})
    assert "This chat now talks to Mei." in await env.say(env.fresh("fan"), "/persona Mei")
    return {}


async def _mei_gone(env: Env, v: dict[str, str]) -> bool:
    return "There is no persona called Mei" in await env.say(env.fresh("fan"), "/persona Mei")


async def _default_model_m2(env: Env, v: dict[str, str]) -> bool:
    return "This chat uses m2." in await env.say(env.fresh("talker"), "/model")


async def _broadcast_reached(env: Env, v: dict[str, str]) -> bool:
    targets = sorted([env.private("b1"), env.group("g7")])
    if sorted(r["target"] for r in await env.rows("broadcast")) != targets:
        return False
    return [await env.delivered(t, "Hello, everyone") for t in targets] == [1, 1]


async def _stranger_has_code(env: Env) -> dict[str, str]:
    answer = await env.stranger("stranger", "hello?")
    m = re.search(r"pairing code is ([A-Z0-9]{6})", answer)
    assert m is not None, answer
    return {"code": m.group(1)}


async def _stranger_let_in(env: Env, v: dict[str, str]) -> bool:
    if not (await env.hub.users.get(env.stranger_user("stranger"))).allowed:
        return False
    chat = env.stranger_chat("stranger")
    told = await env.delivered(chat, "An admin approved you: you can talk to me now. Send /help to see what I can do.")
    return told == 1 and "Commands:" in await env.stranger("stranger", "/help")


async def _a_refusal(env: Env) -> dict[str, str]:
    """Something in the audit log: a non-admin's try."""
    assert is_refusal(await env.say("nosy", "/admin status"), env, "nosy")
    return {}


@dataclass(frozen=True)
class Case:
    args: str  # after `/admin `; `{u_x}` a user, `{p_x}` a private chat, `{g_x}` a group, `{job}`...
    answer: str  # part of the admin's answer (filled the same way)
    zh: str  # part of the same answer in a Chinese chat
    prepare: Prepare = _nothing
    effect: Effect | None = None  # None: the answer is the effect (a read-only subcommand)

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\{\w_|\{|\}", "", self.args.lower()))[:40].strip("-")


CASES = [
    Case("help", "/admin broadcast <chat,chat,...|all> <text>", "/admin broadcast <会话,会话,...|all> <内容>"),
    Case("status", "Channels: ", "渠道："),
    Case("jobs running", "video running", "个状态为 running 的任务：", _a_running_job),
    Case("job {job} cancel", "cancelled", "已取消任务 #{job}", _a_running_job, _cancelled),
    Case("job #{job} retry", "queued again", "任务 #{job} 已重新排队", _a_failed_job, _restarted),
    Case("ban {u_victim}", "{u_victim} is banned", "{u_victim} 已被封禁", _victim_heard_first, _victim_ignored),
    Case("unban {u_victim}", "no longer banned", "{u_victim} 已解除封禁", _ban_victim, _victim_heard),
    Case(
        "quota default video 2",
        "may now use video 2 times per UTC day",
        "没有单独配额的人现在每个 UTC 日可以使用 video 2 次",
        effect=_third_video_stopped,
    ),
    Case(
        "quota {u_u9} video 1",
        "{u_u9} may now use video 1 time per UTC day",
        "{u_u9} 现在每个 UTC 日可以使用 video 1 次",
        _u9_first_video,
        _u9_stopped,
    ),
    Case(
        "skill off video {g_g1}",
        "video is now off in {g_g1}",
        "video 已在 {g_g1} 中关闭",
        _groups_used,
        _video_off_in_g1_only,
    ),
    Case("skill on video {g_g1}", "video is now on", "video 已在 {g_g1} 中开启", _video_off_in_g1, _video_on_in_g1),
    Case('persona add name=Mei style="warm, brief"', "Persona Mei added", "已添加人设 Mei", effect=_mei_exists),
    Case("persona remove Mei", "Persona Mei removed", "已删除人设 Mei", _add_mei, _mei_gone),
    Case("model default m2", "default model is now m2", "默认模型已改为 m2", effect=_default_model_m2),
    Case(
        "broadcast {p_b1},{g_g7} Hello, everyone",
        "Broadcast queued for 2 chats",
        "已为 2 个会话排队群发",
        effect=_broadcast_reached,
    ),
    Case("who {u_maker}", "Today (", "今天（", _a_running_job),
    Case("approve {code}", "Approved {s_stranger}", "已批准 {s_stranger}", _stranger_has_code, _stranger_let_in),
    Case("audit 5", "audit entries", "条审计记录", _a_refusal),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_every_subcommand_refused_to_a_non_admin_and_done_for_an_admin(any_env: Env, case: Case) -> None:
    env = any_env
    values = await case.prepare(env)
    names = env.names(values)
    text = "/admin " + case.args.format_map(names)
    sub = case.args.split()[0]

    # A non-admin: a plain refusal, audited, and nothing happens.
    answer = await env.say("user1", text)
    assert is_refusal(answer, env, "user1"), answer
    entry = await env.last_audit()
    assert (entry.actor, entry.chat, entry.outcome) == (env.user("user1"), env.private("user1"), "refused")
    assert entry.action == f"admin {sub}"
    if case.effect is not None:
        assert not await case.effect(env, values), "a non-admin's command had an effect"
    assert not await env.rows("broadcast")

    # The admin: it works, it is audited, and the effect shows.
    answer = await env.admin(text)
    assert case.answer.format_map(names) in answer, answer
    assert not CJK.search(answer), answer
    mine = [e for e in await env.hub.audit.recent(20) if e.actor == env.user(env.admin_name)]
    assert mine and (mine[0].action, mine[0].outcome, mine[0].chat) == (
        f"admin {sub}",
        "ok",
        env.private(env.admin_name),
    )
    if case.effect is not None:
        assert await case.effect(env, values), f"no visible effect of /admin {case.args}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_every_subcommand_answers_in_chinese_in_a_chinese_chat(env: WebEnv, case: Case) -> None:
    assert "中文" in await env.admin("/lang zh")
    values = await case.prepare(env)
    names = env.names(values)
    answer = await env.admin("/admin " + case.args.format_map(names))
    assert case.zh.format_map(names) in answer, answer
    assert_chinese(answer)
    if case.effect is not None:
        # Seen by people in English chats: the notices to them are in their own language.
        assert await case.effect(env, values), f"no visible effect of /admin {case.args}"


async def test_pairing_flow_end_to_end(any_env: Env) -> None:
    env = any_env
    first = await env.stranger("stranger", "hi there")
    code = re.search(r"pairing code is ([A-Z0-9]{6})", first)
    assert code is not None and "/admin approve" in first and env.stranger_user("stranger") in first
    # Nothing else is handled before approval, and asking again gives the same code.
    again = await env.stranger("stranger", "/help")
    assert f"pairing code is {code.group(1)}" in again and "Commands:" not in again
    answer = await env.admin(f"/admin approve {code.group(1).lower()}")
    assert answer == f"Approved {env.stranger_user('stranger')}; they have been told."
    notice = "An admin approved you: you can talk to me now. Send /help to see what I can do."
    assert await env.delivered(env.stranger_chat("stranger"), notice) == 1
    assert "Commands:" in await env.stranger("stranger", "/help")
    assert "already approved" in await env.admin(f"/admin approve {code.group(1)}")
    # The notice went through the outbox, once.
    notices = await env.rows("pairing")
    assert len(notices) == 1 and notices[0]["status"] == "sent"
    # Another stranger is still kept out.
    assert "pairing code is" in await env.stranger("stranger2", "hello")


async def test_broadcast_to_all_reaches_every_known_chat_once_through_the_outbox(any_env: Env) -> None:
    env = any_env
    assert "Commands:" in await env.say("w1", "/help")
    assert "Commands:" in await env.say("w2", "/help")
    assert "Commands:" in await env.say_in("g1", "member", "/help")
    assert "Commands:" in await env.say_in("g2", "member", "/help")
    await env.hub.chats.mark_unreachable(env.group("gone"), "the bot was removed")
    answer = await env.admin("/admin broadcast all Maintenance at 22:00 UTC")
    targets = {env.private("w1"), env.private("w2"), env.private("admin1"), env.group("g1"), env.group("g2")}
    assert f"Broadcast queued for {len(targets)} chats." in answer

    async def all_sent() -> bool:
        rows = await env.rows("broadcast")
        return len(rows) == len(targets) and all(r["status"] == "sent" for r in rows)

    await eventually(all_sent)
    rows = await env.rows("broadcast")
    assert {r["target"] for r in rows} == targets
    assert len({r["idempotency_key"] for r in rows}) == len(rows)
    for target in sorted(targets):
        assert await env.delivered(target, "Maintenance at 22:00 UTC") == 1, target


async def test_a_chat_marked_unreachable_that_writes_again_is_broadcast_to_again(any_env: Env) -> None:
    env = any_env
    await env.hub.chats.mark_unreachable(env.group("back"), "the bot was removed")
    assert "Commands:" in await env.say_in("back", "member", "/help")
    assert not (await env.hub.chats.get(env.group("back"))).unreachable
    answer = await env.admin("/admin broadcast all Back again")
    assert "Broadcast queued for" in answer

    async def reached() -> bool:
        return await env.delivered(env.group("back"), "Back again") == 1

    await eventually(reached)


# --- beyond the table, on the web chat -------------------------------------------------------------


async def test_admin_answers_are_audited_with_who_where_what_when(env: WebEnv) -> None:
    await env.admin("/admin ban web:pest")
    await env.admin("/admin ban nonsense")
    bad, good = await env.hub.audit.recent(2)
    assert (good.actor, good.chat, good.action, good.detail, good.outcome) == (
        "web:admin1",
        "web:private:admin1",
        "admin ban",
        "web:pest",
        "ok",
    )
    assert bad.outcome == "invalid" and "nonsense" in bad.detail
    assert good.at <= bad.at
    listing = await env.admin("/admin audit 2")
    assert "web:admin1 in web:private:admin1: admin ban → ok web:pest" in listing


@pytest.mark.parametrize(
    "args,says",
    [
        ("ban telegramm:1", "there is no channel 'telegramm'"),
        (f"ban {OWNER}", "admins cannot be banned"),
        ("quota web:x video lots", "'lots' is not a number"),
        ("quota web:x dance 3", "No skill 'dance'"),
        ("skill off video nowhere", "is not a chat"),
        ("skill maybe video", "Say on or off"),
        ("model default gpt-9", "No model 'gpt-9' in the configuration (models: m1, m2)"),
        ('persona add name=Mei style="unclosed', "Cannot read the arguments"),
        ("persona add name=Mei mood=happy", "Unknown persona fields: mood. Known: "),
        ("persona add style=warm", "A persona needs a name"),
        ("job zzzz cancel", "No job zzzz"),
        ("jobs sleeping", "Give one state, or none"),
        ("broadcast all", "Give the targets, then the text"),
        ("approve NOCODE", "No pairing code 'NOCODE'"),
        ("frobnicate", "Unknown subcommand 'frobnicate'"),
    ],
)
async def test_bad_input_gets_a_reason_and_the_usage_and_changes_nothing(env: WebEnv, args: str, says: str) -> None:
    answer = await env.admin(f"/admin {args}")
    assert says in answer, answer
    entry = await env.last_audit()
    assert entry.actor == "web:admin1" and entry.outcome == "invalid"
    assert not (await env.hub.users.get(OWNER)).banned
    assert await env.hub.kv.get("default_model") is None
    assert await env.hub.personas.get("Mei") is None


async def test_bad_input_in_a_chinese_chat_gets_the_reason_and_the_usage_in_chinese(env: WebEnv) -> None:
    assert "中文" in await env.admin("/lang zh")
    for args, says in [
        ("ban telegramm:1", "没有渠道“telegramm”"),
        (f"ban {OWNER}", "管理员不能被封禁"),
        ("ban", "请指定一个用户。"),
        ("quota web:x video lots", "“lots”不是每天的使用次数"),
        ("quota web:x dance 3", "没有技能“dance”：请从 chat、image、video、music 中选择。"),
        ("skill off video nowhere", "“nowhere”不是会话"),
        ("model default gpt-9", "配置中没有模型“gpt-9”（可用模型：m1、m2）。"),
        ('persona add name=Mei style="unclosed', "无法读取参数"),
        ("persona add name=Mei mood=happy", "未知的人设字段：mood。"),
        ("persona remove Nobody", "没有人设“Nobody”"),
        ("job zzzz cancel", "没有任务 zzzz。"),
        ("jobs sleeping", "请给出一个状态，或不写：queued、"),
        ("broadcast all", "请先给出目标会话"),
        ("approve NOCODE", "没有配对码“NOCODE”"),
        ("audit many", "请给出要显示的条数"),
    ]:
        answer = await env.admin(f"/admin {args}")
        assert says in answer and "\n用法：/admin " in answer, answer
        assert_chinese(answer)
        entry = await env.last_audit()
        # The audit log stays English for whoever reads it on the server.
        assert entry.outcome == "invalid" and not CJK.search(entry.detail), entry
    unknown = await env.admin("/admin frobnicate")
    assert "未知的子命令“frobnicate”。发送 /admin help 查看列表。" == unknown
    assert not (await env.hub.users.get(OWNER)).banned


async def test_admin_with_no_subcommand_gets_help(env: WebEnv) -> None:
    assert "Admin commands:" in await env.admin("/admin")


async def test_a_running_job_cannot_be_retried_nor_a_cancelled_one_cancelled_again(env: WebEnv) -> None:
    values = await _a_running_job(env)
    assert "only a failed, timed-out or cancelled job" in await env.admin(f"/admin job {values['job']} retry")
    assert "cancelled" in await env.admin(f"/admin job {values['job']} cancel")
    assert "only a job still being made can be cancelled" in await env.admin(f"/admin job {values['job']} cancel")


async def test_a_broadcast_handled_again_after_a_crash_sends_nothing_twice(env: WebEnv) -> None:
    event = Event(
        id="bc-1",
        channel="web",
        chat=ChatRef("web", "private", "admin1"),
        sender=User("web", "admin1"),
        context={"web_admin": True},  # what the web chat sets for a request carrying the token
        message=Message((Text("/admin broadcast fake:group:g1,fake:group:g2 Once only"),)),
    )

    class Quiet:
        async def reply(self, message: Any, *, quote: bool = True) -> None:
            pass

        def stream(self) -> Any:
            raise AssertionError

        async def action(self, kind: str = "typing") -> None:
            pass

    # The same event handled twice, as recovery does after a kill mid-broadcast.
    await env.hub.router.handle(event, Quiet())
    await env.hub.router.handle(event, Quiet())
    rows = await env.rows("broadcast")
    assert sorted(r["target"] for r in rows) == ["fake:group:g1", "fake:group:g2"]

    async def all_sent() -> bool:
        return all(r["status"] == "sent" for r in await env.rows("broadcast"))

    await eventually(all_sent)
    assert env.sent_to("fake:group:g1") == env.sent_to("fake:group:g2") == ["Once only"]


async def test_an_admin_added_from_the_command_line_may_use_admin(env: WebEnv, tmp_path: Path) -> None:
    assert is_refusal(await env.say("boss", "/admin status"), env, "boss")
    config = str(tmp_path / "hub.toml")
    assert await asyncio.to_thread(cli_main, ["admin", "add", "fake:boss", "--config", config]) == 0
    env.hub.people.invalidate()
    assert "Channels:" in await env.say("boss", "/admin status")
    assert await asyncio.to_thread(cli_main, ["admin", "remove", "fake:boss", "--config", config]) == 0
    env.hub.people.invalidate()
    assert is_refusal(await env.say("boss", "/admin status"), env, "boss")
    # A web user names itself: never an admin by name.
    assert await asyncio.to_thread(cli_main, ["admin", "add", "web:boss", "--config", config]) == 2


async def test_who_shows_standing_usage_and_jobs(env: WebEnv) -> None:
    maker = env.user("maker")
    await env.admin(f"/admin quota {maker} video 3")
    values = await _a_running_job(env)
    await env.admin(f"/admin ban {maker}")
    answer = await env.admin(f"/admin who {maker}")
    assert f"{maker}: banned" in answer
    assert "video 1/3" in answer and "image 0/∞" in answer
    assert f"#{values['job']} video" in answer
    assert "Last 7 days: video 1" in answer


async def test_status_counts_channels_backlogs_jobs_and_recent_failures(env: WebEnv) -> None:
    await _a_failed_job(env)
    await _a_running_job(env)
    answer = await env.admin("/admin status")
    assert re.search(r"^Up \d+ seconds? \(since \d{4}-\d\d-\d\d \d\d:\d\d UTC\)$", answer.splitlines()[0])
    assert "Channels: web running, fake running" in answer
    assert "Backlog: inbox " in answer and ", outbox " in answer
    assert "failed 1" in answer and "running 1" in answer
    assert "Failures in the last hour: sends 0, events 0, jobs 1" in answer


async def test_status_and_who_read_naturally_in_chinese(env: WebEnv) -> None:
    await _a_failed_job(env)
    values = await _a_running_job(env)
    maker = env.user("maker")
    await env.admin(f"/admin quota {maker} video 3")
    assert "中文" in await env.admin("/lang zh")
    lines = (await env.admin("/admin status")).splitlines()
    assert re.search(r"^已运行 \d+ 秒（自 \d{4}-\d\d-\d\d \d\d:\d\d UTC 起）$", lines[0]), lines
    assert lines[1] == "渠道：web running、fake running"
    assert re.search(r"^积压：收件箱 \d+，发件箱 \d+$", lines[2]), lines
    assert lines[3].startswith("任务：") and "failed 1" in lines[3] and "running 1" in lines[3]
    assert lines[4] == "最近一小时的失败：发送 0，事件 0，任务 1"
    who = (await env.admin(f"/admin who {maker}")).splitlines()
    assert who[0] == f"{maker}：已批准"
    assert re.search(r"^今天（\d{4}-\d\d-\d\d UTC）：chat 0/∞、image 0/∞、video 2/3、music 0/∞$", who[1]), who
    assert who[2] == "最近 7 天：video 2" and who[3] == "最近的任务："
    assert any(line.startswith(f"#{values['job']} video running · {maker} 在 ") and "前 · " in line for line in who)


# --- answers that name people stay out of groups ---------------------------------------------------


async def test_who_and_audit_asked_in_a_telegram_group_answer_the_admin_privately(tmp_path: Path) -> None:
    admin = "telegram:700001"
    async with started_telegram(tmp_path, f'admins = ["{admin}"]\n{MODELS}{VIDEO}{POLICY}') as t:
        assert t.user(t.admin_name) == admin
        group, private = t.group("team"), t.private(t.admin_name)
        # One entry so far (the who): "entry", not "entries".
        for text, says in ((f"/admin who {admin}", f"{admin}: admin"), ("/admin audit 3", "Last 1 audit entry (UTC")):
            await t.say_in("team", t.admin_name, text)
            assert [m for m in t.sent_to(private) if says in m]  # sent once say_in returns
            assert says not in "\n".join(t.sent_to(group))
        assert t.sent_to(group) == [texts("en")(PRIVATE_NOTE)] * 2
        # Through the outbox like any reply.
        rows = [r for r in await t.rows() if r["target"] == private]
        assert len(rows) == 2 and all(r["status"] == "sent" for r in rows)


async def test_an_answer_sent_privately_is_in_the_private_chats_language(tmp_path: Path) -> None:
    admin = "telegram:700001"
    async with started_telegram(tmp_path, f'admins = ["{admin}"]\n{MODELS}{VIDEO}{POLICY}') as t:
        group, private = t.group("team"), t.private(t.admin_name)
        assert "中文" in await t.say_in("team", t.admin_name, "/lang zh")
        await t.say_in("team", t.admin_name, f"/admin who {admin}")
        # The group reads the note in its language; the admin's own chat is English.
        assert t.sent_to(group)[-1] == texts("zh")(PRIVATE_NOTE)
        assert t.sent_to(private)[-1].startswith(f"{admin}: admin\nToday (")


async def test_who_and_audit_asked_in_a_group_elsewhere_say_ask_me_privately(env: WebEnv) -> None:
    await env.hub.users.set(OWNER, allowed=True)
    for text in (f"/admin who {OWNER}", "/admin audit"):
        answer = await env.fake("owner", text, chat="g1", group=True)
        assert "ask me in a private chat" in answer
        assert "audit entries" not in answer and f"{OWNER}: admin" not in answer
    # Asked privately, it answers.
    assert f"{OWNER}: admin" in await env.fake("owner", f"/admin who {OWNER}")
