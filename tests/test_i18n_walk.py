"""Every answer, refusal and notice in both languages, and every text from the catalogs.

The walk talks to a real hub, on Telegram (one platform fake) and the web chat, as users whose
chats are Chinese and English, through every skill: commands with and without arguments,
mistakes, refusals, quota and pairing notices, jobs that succeed, fail and are cancelled, and
`/admin`. It records every text the catalogs produced on the way (`Texts` is wrapped), then
holds each message the users received to two rules:

- every msgid used is in both catalogs, translated (no text built at run time);
- what a user read is made of catalog texts and the data the walk itself put in (prompts,
  names, job ids, numbers): any other word is a text that is not in the catalogs.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po
from fake_openai import FakeOpenAI
from fake_providers import FakeHunyuan, FakeImages, FakeMusic
from fake_telegram import FakeTelegram, message_update, post_update, telegram_toml
from harness import RunningHub, eventually, make_settings, running_hub, text_of, web_chat
from jobs_helpers import JOB_REF, providers_toml
from sqlalchemy import func, select

from hub.i18n.texts import LOCALE_DIR, Texts
from hub.storage.jobs import IN_FLIGHT
from hub.storage.models import audit, jobs, outbox

pytestmark = pytest.mark.slow

CJK = re.compile(r"[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]")
WORD = re.compile(r"[A-Za-z]{3,}")
GROUP = -1009876543210
# What the walk types that may come back in answers (prompts, names), and data the hub shows
# as it is (ids, numbers, dates, ChatRefs, config keys, commands).
DATA = re.compile(
    r"#[0-9a-f]{4,8}|https?://\S+|\b\w+:(?:private|group):\S+|\b\w+:\d+|\[\[?[\w.]+\]?\]|/\w+(?:@\w+)?"
    r"|\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?|\b\d+(\.\d+)?\b|UTC"
)


class Recorder:
    """Wraps Texts: every msgid asked for, and every text produced, by language."""

    def __init__(self) -> None:
        self.msgids: set[str] = set()
        self.produced: dict[str, set[str]] = {"zh": set(), "en": set()}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        call, plural = Texts.__call__, Texts.plural
        rec = self

        def wrapped_call(self: Texts, msgid: str, /, **values: object) -> str:
            out = call(self, msgid, **values)
            rec.msgids.add(msgid)
            rec.produced[self.lang].add(out)
            return out

        def wrapped_plural(self: Texts, one: str, many: str, n: int, /, **values: object) -> str:
            out = plural(self, one, many, n, **values)
            rec.msgids.add(one)
            rec.produced[self.lang].add(out)
            return out

        monkeypatch.setattr(Texts, "__call__", wrapped_call)
        monkeypatch.setattr(Texts, "plural", wrapped_plural)

    def unexplained(self, text: str, lang: str, data: set[str]) -> str:
        """What is left of a message after every catalog text and every piece of data."""
        rest = text
        for piece in sorted(self.produced[lang] | data, key=len, reverse=True):
            if piece.strip():
                # Whole words only: the data `en` is not taken out of `Send`.
                rest = re.sub(rf"(?<![A-Za-z]){re.escape(piece)}(?![A-Za-z])", " ", rest)
        return DATA.sub(" ", rest)


def catalog(lang: str) -> dict[str, Any]:
    with (LOCALE_DIR / lang / "LC_MESSAGES" / "hub.po").open("rb") as f:
        return {(m.id if isinstance(m.id, str) else m.id[0]): m for m in read_po(f) if m.id}


class Walk:
    def __init__(self, h: RunningHub, tg: FakeTelegram) -> None:
        self.h = h
        self.tg = tg
        # (language, text) of every message a user received.
        self.received: list[tuple[str, str]] = []
        self.data: set[str] = set()

    async def settled(self, chat: str, *, jobs_done: bool = True) -> None:
        async def quiet() -> bool:
            async with self.h.hub.db.engine.connect() as conn:
                pending = await conn.scalar(
                    select(func.count()).where(outbox.c.target == chat, outbox.c.status == "pending")
                )
                running = await conn.scalar(
                    select(func.count()).where(jobs.c.chat == chat, jobs.c.state.in_(IN_FLIGHT))
                )
            return pending == 0 and (running == 0 or not jobs_done)

        await eventually(quiet, timeout=30)

    async def telegram(
        self, lang: str, uid: int, text: str, *, group: bool = False, code: str | None = None, jobs_done: bool = True
    ) -> list[str]:
        """Say `text` as Telegram user `uid` (app language `code`); the messages that came back."""
        self.data.add(text.split(" ", 1)[1] if " " in text else "")
        self.data.add(f"re: {text}")  # the fake model's answer
        user = {"id": uid, "is_bot": False, "first_name": f"U{uid}", "language_code": code or lang}
        chat_id = GROUP if group else uid
        update = message_update(text, chat_id=chat_id, chat_type="supergroup" if group else None, from_user=user)
        before = len(self._sent(chat_id))
        assert await post_update(self.h.url, update) == 200

        async def handled() -> bool:
            row = await self.h.hub.inbox.get("telegram", str(update["update_id"]))
            return row is not None and row["status"] == "done"

        await eventually(handled, timeout=30)
        await self.settled(f"telegram:{'group' if group else 'private'}:{chat_id}", jobs_done=jobs_done)
        got = self._sent(chat_id)[before:]
        self.received.extend((lang, t) for t in got)
        return got

    def _sent(self, chat_id: int) -> list[str]:
        out = []
        for method in ("sendMessage", "sendPhoto", "sendVideo", "sendAudio", "sendDocument"):
            for call in self.tg.delivered(method):
                if call.params.get("chat_id") == str(chat_id):
                    text = call.params.get("text") or call.params.get("caption") or ""
                    out.append((call.at, text))
        return [t for _, t in sorted(out, key=lambda x: x[0]) if t]

    async def web(self, lang: str, session: str, text: str, **headers: str) -> str:
        self.data.add(text.split(" ", 1)[1] if " " in text else "")
        got = text_of(await web_chat(self.h.url, session, text, headers=headers or None))
        self.received.append((lang, got))
        return got


def steps(prompt_tag: str) -> Iterator[str]:
    """Everything a person can type, with and without arguments, right and wrong."""
    yield from ("/help", "/lang", "/lang klingon", "/nosuchcommand", "hello there")
    yield from ("/persona", "/persona Nobody", "/persona Ada", "/persona", "/model", "/model nosuch", "/model m1")
    yield from ("/model", "/reset", "/image", "/video", "/music", "/jobs", "/cancel", "/cancel #ffff")
    yield from (f"/image a red cat {prompt_tag}", f"/image [fail] a cat {prompt_tag}")
    yield from (f"/video a piglet {prompt_tag}", f"/video a piglet {prompt_tag}", f"/video [fail] pig {prompt_tag}")
    yield from (f"/music calm piano {prompt_tag}", f"/music more piano {prompt_tag}")
    yield from ("/jobs", "/admin status", "/admin")


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeTelegram, FakeOpenAI, FakeHunyuan, FakeMusic, FakeImages]]:
    tg, model = FakeTelegram(), FakeOpenAI()
    hunyuan, music, images = (
        FakeHunyuan(queued_s=0.05, running_s=0.1),
        FakeMusic(queued_s=0.05, running_s=0.1),
        FakeImages(),
    )
    for f in (tg, model, hunyuan, music, images):
        await f.start()
    yield tg, model, hunyuan, music, images
    for f in (tg, model, hunyuan, music, images):
        await f.stop()


async def test_every_answer_in_both_languages_comes_from_both_catalogs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes: tuple[Any, ...]
) -> None:
    tg, model, hunyuan, music, images = fakes
    recorder = Recorder()
    recorder.install(monkeypatch)
    admins = [4001, 4002]
    toml = (
        f'admins = ["telegram:{admins[0]}", "telegram:{admins[1]}"]\n'
        + telegram_toml(tg.url)
        + providers_toml(hunyuan=hunyuan.url, music=music.url, image=images.url)
        + f'[[models]]\nname = "m1"\nbase_url = "{model.url}/v1"\napi_key = "k"\nmodel = "fake-chat"\n'
        + '[[personas]]\nname = "Ada"\npersonality = "kind"\n'
        + "[quotas]\nmusic = 1\n"
        + '[access]\nprivate = "pairing"\n'
        + 'allow = ["telegram:2001", "telegram:2002", "telegram:3001", "telegram:3002"]\n'
    )
    async with running_hub(make_settings(tmp_path, toml)) as h:
        walk = Walk(h, tg)
        walk.data |= {"Ada", "m1", "Nobody", "nosuch", "klingon", "nosuchcommand", "fake-chat"}
        for lang, uid in (("zh", 2001), ("en", 2002)):
            for text in steps(f"by {uid}"):
                await walk.telegram(lang, uid, text)
            # A job still running, cancelled; then cancelled again.
            queued = await walk.telegram(lang, uid, f"/video [never] slow {uid}", jobs_done=False)
            ref = JOB_REF.search(queued[0])
            assert ref, queued
            await walk.telegram(lang, uid, f"/cancel #{ref.group(1)}")
            await walk.telegram(lang, uid, f"/cancel {ref.group(1)}")
        # /lang switches a chat whatever its app says: the English app user in Chinese, and back.
        for text in ("/lang zh", "/help", "/jobs", "/lang"):
            await walk.telegram("zh", 3001, text, code="en")
        for text in ("/lang en", "/help", "/lang"):
            await walk.telegram("en", 3002, text, code="zh-hans")
        # Strangers meet the pairing policy.
        await walk.telegram("zh", 5001, "hello", code="zh")
        await walk.telegram("en", 5002, "hello", code="en")
        # A group: a member may not change the group's settings.
        for lang, uid in (("zh", 2001), ("en", 2002)):
            await walk.telegram(lang, uid, "/lang " + lang, group=False)
        await walk.telegram("zh", 3001, "/reset", group=True, code="zh")
        # Admins, in both languages.
        for lang, uid in (("zh", admins[0]), ("en", admins[1])):
            for text in ("/admin", "/admin help", "/admin status", "/admin jobs", "/admin audit 5", "/admin nosuch"):
                await walk.telegram(lang, uid, text)
        # The web chat: its own refusals and answers.
        for lang, session in (("zh", "walk-zh"), ("en", "walk-en")):
            await walk.web(lang, session, f"/lang {lang}")
            for text in ("/help", "/lang", "/admin status", "/jobs", "/cancel #abcd", "/persona", "hi"):
                await walk.web(lang, session, text)

        # What the hub shows as it is: providers' own error words, audit rows (kept in English
        # for operators to grep), channel states.
        async with h.hub.db.engine.connect() as conn:
            walk.data |= {r.error for r in await conn.execute(select(jobs.c.error)) if r.error}
            for r in await conn.execute(select(audit)):
                walk.data |= {str(v) for v in (r.action, r.outcome, r.detail) if v}

    assert len(walk.received) > 100
    zh, en = catalog("zh"), catalog("en")
    missing = sorted(m for m in recorder.msgids if m not in zh or m not in en or not zh[m].string or not en[m].string)
    assert not missing, f"texts used but not in both catalogs: {missing}"

    problems = []
    for lang, text in walk.received:
        rest = recorder.unexplained(text, lang, walk.data)
        if WORD.search(rest) or (lang == "en" and CJK.search(rest)) or (lang == "zh" and CJK.search(rest)):
            problems.append(f"[{lang}] {text!r} -> left: {rest.strip()!r}")
        if lang == "en" and CJK.search(recorder.unexplained(text, "en", walk.data)):
            problems.append(f"[en] Chinese in an English chat: {text!r}")
    assert not problems, "texts not from the catalogs:\n" + "\n".join(problems)
    # And each language answered in its own: the Chinese chats read Chinese.
    zh_answers = [t for lang, t in walk.received if lang == "zh"]
    assert sum(bool(CJK.search(t)) for t in zh_answers) >= len(zh_answers) * 0.9
