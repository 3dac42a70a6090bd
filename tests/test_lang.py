"""The chat's language: `/lang` end to end across a restart, the resolution order, aliases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fake_telegram import FakeTelegram, message_update, post_update, telegram_toml
from harness import HubProcess, make_settings, running_hub, text_of, web_chat

from hub.i18n.language import choose, from_accept_language, from_tag

CJK = re.compile(r"[\u4e00-\u9fff]")

pytestmark = pytest.mark.slow


async def say(url: str, session: str, text: str, **headers: str) -> str:
    return text_of(await web_chat(url, session, text, headers=headers or None))


async def test_lang_is_set_shown_kept_across_a_restart_and_changes_help(tmp_path: Path) -> None:
    hub = HubProcess(["-m", "hub", "run"], {"HUB_HTTP__PORT": "0"}, tmp_path)
    url = await hub.start()
    try:
        # Nothing chose a language: the web chat falls back to English.
        shown = await say(url, "s1", "/lang")
        assert "English" in shown and not CJK.search(shown.replace("中文", ""))
        help_en = await say(url, "s1", "/help")
        assert help_en.startswith("Commands:") and "/视频" not in help_en
        assert "/lang [zh|en]" in help_en

        answer = await say(url, "s1", "/lang zh")
        assert "中文" in answer and CJK.search(answer)
        help_zh = await say(url, "s1", "/help")
        assert help_zh.startswith("可用命令：")
        # Chinese aliases are listed in Chinese chats, and work.
        assert "/视频" in help_zh and "/帮助" in help_zh
        assert await say(url, "s1", "/帮助") == help_zh
        # Another chat is not affected.
        assert (await say(url, "s2", "/help")) == help_en
    finally:
        assert hub.terminate() == 0, hub.logs()

    again = HubProcess(["-m", "hub", "run"], {"HUB_HTTP__PORT": "0"}, tmp_path)
    url = await again.start()
    try:
        shown = await say(url, "s1", "/lang")
        assert "中文" in shown and "/lang" in shown
        assert await say(url, "s1", "/help") == help_zh
        answer = await say(url, "s1", "/lang en")
        assert "English" in answer and not CJK.search(answer)
        assert await say(url, "s1", "/help") == help_en
        # `/lang auto` goes back to the default order; the browser's language is the hint.
        await say(url, "s1", "/lang auto")
        assert (await say(url, "s1", "/help", **{"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})) == help_zh
        assert (await say(url, "s1", "/help", **{"Accept-Language": "en-GB,en;q=0.9"})) == help_en
        # A word /lang does not know: the answer says which it does.
        assert "/lang zh" in await say(url, "s1", "/lang klingon")
    finally:
        assert again.terminate() == 0, again.logs()


async def test_help_marks_the_commands_this_hub_has_not_set_up(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        text = await say(h.url, "s", "/help")
    lines = {line.split(" ", 1)[0]: line for line in text.splitlines()}
    assert "[providers.hunyuan]" in lines["/video"] and "[providers.image]" in lines["/image"]
    assert "[providers.music]" in lines["/music"] and "[[models]]" in lines["/model"]
    assert "not set up" not in lines["/jobs"] and "not set up" not in lines["/lang"]
    # Admin commands are listed to admins only.
    assert "/admin" not in lines


async def test_telegram_app_language_is_the_hint(tmp_path: Path) -> None:
    tg = FakeTelegram()
    await tg.start()
    try:
        async with running_hub(make_settings(tmp_path, telegram_toml(tg.url))) as h:
            zh_user = {"id": 2222, "is_bot": False, "first_name": "李", "language_code": "zh-hans"}
            assert await post_update(h.url, message_update("/help", chat_id=2222, from_user=zh_user)) == 200
            en_user = {"id": 3333, "is_bot": False, "first_name": "Ann", "language_code": "en"}
            assert await post_update(h.url, message_update("/help", chat_id=3333, from_user=en_user)) == 200
            await tg.wait_for(lambda: len(tg.delivered()) == 2)
            by_chat = {m.params["chat_id"]: m.params["text"] for m in tg.delivered()}
            assert by_chat["2222"].startswith("可用命令：") and by_chat["3333"].startswith("Commands:")
    finally:
        await tg.stop()


async def test_bot_language_and_persona_language_come_before_the_hint(tmp_path: Path) -> None:
    toml = '[bot]\nlanguage = "zh"\n[[personas]]\nname = "Ada"\nlanguage = "en"\n'
    async with running_hub(make_settings(tmp_path, toml)) as h:
        # No persona chosen yet... the default is none, so [bot] language decides.
        assert (await say(h.url, "s", "/help", **{"Accept-Language": "en"})).startswith("可用命令：")
        await say(h.url, "s", "/persona Ada")
        # Ada speaks English: her chat is answered in English, whatever the hub's default.
        assert (await say(h.url, "s", "/help")).startswith("Commands:")
        await say(h.url, "s", "/lang zh")
        assert (await say(h.url, "s", "/help")).startswith("可用命令：")


async def test_aliases_can_be_changed_and_removed(tmp_path: Path) -> None:
    toml = '[commands]\naliases = { "帮助" = "", "h" = "help", "任务" = "help" }\n'
    async with running_hub(make_settings(tmp_path, toml)) as h:
        assert (await say(h.url, "s", "/h")).startswith("Commands:")
        assert (await say(h.url, "s", "/任务")).startswith("Commands:")
        assert "/帮助" in await say(h.url, "s", "/帮助")  # unknown now: the answer names it
        assert "Unknown command" in await say(h.url, "s", "/帮助")


def test_an_alias_to_no_command_is_a_configuration_mistake(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[commands]\naliases = { "画" = "draw", "视频" = "" }\n', encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("HUB_")}
    args = [sys.executable, "-m", "hub", "check-config", "--config", str(cfg)]
    done = subprocess.run(args, cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("commands.aliases.画: must name a command (help, ")
    assert "视频" not in done.stderr  # "" removes a default alias: not a mistake


@pytest.mark.parametrize(
    "kw,expected",
    [
        ({"chat": "en", "persona": "zh", "bot": "zh", "channel": "wechat", "hint": "zh"}, "en"),
        ({"chat": None, "persona": "en", "bot": "zh", "channel": "wechat", "hint": "zh"}, "en"),
        ({"chat": None, "persona": None, "bot": "en", "channel": "wechat", "hint": "zh"}, "en"),
        ({"chat": None, "persona": None, "bot": "auto", "channel": "telegram", "hint": "zh-TW"}, "zh"),
        ({"chat": None, "persona": None, "bot": "auto", "channel": "telegram", "hint": "ru"}, "en"),
        ({"chat": None, "persona": None, "bot": "auto", "channel": "qq", "hint": None}, "zh"),
        ({"chat": None, "persona": None, "bot": "auto", "channel": "onebot", "hint": None}, "zh"),
        ({"chat": None, "persona": None, "bot": "auto", "channel": "feishu", "hint": None}, "zh"),
        ({"chat": None, "persona": None, "bot": "auto", "channel": "wecom", "hint": None}, "zh"),
        ({"chat": None, "persona": None, "bot": "auto", "channel": "web", "hint": None}, "en"),
        ({"chat": "fr", "persona": None, "bot": "auto", "channel": "web", "hint": ["zh"]}, "en"),
    ],
)
def test_the_language_order(kw: dict[str, object], expected: str) -> None:
    assert choose(**kw) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "header,expected",
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("fr-FR,fr;q=0.9,zh;q=0.5,en;q=0.4", "zh"),
        ("en;q=0.1, zh;q=0.2", "zh"),
        ("zh;q=0, en", "en"),
        ("de, fr", None),
        ("", None),
        (None, None),
        (";;;,,,q=x", None),
        ("zh;q=abc", None),
        ("x" * 100_000, None),
    ],
)
def test_accept_language(header: str | None, expected: str | None) -> None:
    assert from_accept_language(header) == expected


def test_tags() -> None:
    assert [from_tag(x) for x in ("zh_Hans_CN", "ZH", "en-gb", "", None, 5, "zhx")] == [
        "zh",
        "zh",
        "en",
        None,
        None,
        None,
        None,
    ]
