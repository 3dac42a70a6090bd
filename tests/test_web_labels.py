"""The web page's own words (title line, box, button, notices): in the browser's language, with
the session's `/lang` winning, from the real app over HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from harness import make_settings, running_hub, text_of, web_chat

from hub.channels.web import LABELS, MAX_TEXT, labels
from hub.i18n import texts

ZH = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}
EN = {"Accept-Language": "en-US,en;q=0.9"}


async def get_page(url: str, headers: dict[str, str]) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/", headers=headers) as resp:
        assert resp.status == 200 and resp.headers["Vary"] == "Accept-Language"
        return await resp.text()


async def get_labels(url: str, session: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/web/labels", params={"session": session}, headers=headers) as resp:
            return resp.status, await resp.json()


def given_labels(page: str) -> dict[str, str]:
    """The words the page's script starts with."""
    found = re.search(r'<script id="labels" type="application/json">(.*?)</script>', page, re.S)
    assert found is not None
    return dict(json.loads(found.group(1)))


async def test_the_page_is_in_the_browsers_language(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        zh = await get_page(h.url, ZH)
        assert '<html lang="zh-CN">' in zh
        assert '<span id="subtitle">发送 /help 查看我能做什么。</span>' in zh
        assert 'placeholder="消息"' in zh and '<button id="send" type="submit">发送</button>' in zh
        assert given_labels(zh) == labels("zh") and given_labels(zh)["token"] == "本机器人需要访问令牌："
        assert "{{" not in zh

        en = await get_page(h.url, EN)
        assert '<html lang="en">' in en and '<button id="send" type="submit">Send</button>' in en
        assert 'placeholder="Message"' in en and given_labels(en) == labels("en")
        # No Accept-Language, or neither language in it: English, the web's default.
        assert given_labels(await get_page(h.url, {})) == labels("en")
        assert given_labels(await get_page(h.url, {"Accept-Language": "fr-FR, de;q=0.5"})) == labels("en")


async def test_lang_in_a_session_wins_over_the_browser(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        assert await get_labels(h.url, "s1", ZH) == (200, labels("zh"))
        # The session answers in Chinese, as its browser asks...
        assert "可用命令" in text_of(await web_chat(h.url, "s1", "/help", headers=ZH))
        # ...until /lang en: then its page's words are English too, whatever the browser says.
        assert "English" in text_of(await web_chat(h.url, "s1", "/lang en", headers=ZH))
        assert await get_labels(h.url, "s1", ZH) == (200, labels("en"))
        # Another session of the same browser keeps the browser's language.
        assert await get_labels(h.url, "s2", ZH) == (200, labels("zh"))
        # Back to the default order: the browser's language again.
        await web_chat(h.url, "s1", "/lang auto", headers=ZH)
        assert await get_labels(h.url, "s1", ZH) == (200, labels("zh"))


async def test_the_hubs_language_comes_before_the_browsers(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path, '[bot]\nlanguage = "zh"\n')) as h:
        assert given_labels(await get_page(h.url, EN)) == labels("zh")
        assert await get_labels(h.url, "s1", EN) == (200, labels("zh"))


def test_every_label_is_in_both_catalogs_and_fills_as_the_page_does() -> None:
    for lang in ("zh", "en"):
        words = labels(lang)  # type: ignore[arg-type]
        assert set(LABELS) < set(words) and all(words.values())
        assert words["too_long"] == texts(lang).plural(  # type: ignore[arg-type]
            "Not sent: a message can be at most %(n)s character long.",
            "Not sent: a message can be at most %(n)s characters long.",
            MAX_TEXT,
        )
        assert words["max_text"] == str(MAX_TEXT)
        # The one placeholder the page fills itself.
        assert "%(reason)s" in words["not_sent"]
    assert labels("zh")["not_sent"] == "未发送：%(reason)s"
