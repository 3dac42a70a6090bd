"""The web chat page, driven in headless Chromium against the real app on 127.0.0.1."""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

from browser import Page, chromium
from harness import make_settings, running_hub, text_of, web_chat

from hub.channels.web import MAX_TEXT
from hub.events import ChatRef, Image, Message
from hub.storage.outbox import NewMessage

# The reply bubbles (not the empty-page hint), and the last one once it has finished.
REPLIES = "[...document.querySelectorAll('.msg.bot')]"
LAST_REPLY_DONE = f"(() => {{ const r = {REPLIES}; const l = r[r.length - 1];"
LAST_REPLY_DONE += " return l && !l.classList.contains('pending') ? l.textContent : ''; })()"


def png(width: int, height: int) -> bytes:
    """A real PNG of one colour, so that the browser can decode it."""
    rows = b"".join(b"\x00" + b"\x50\x8c\xdc" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def open_chat(page: Page, url: str) -> None:
    await page.goto(f"{url}/")
    await page.wait_for("document.getElementById('input') && document.getElementById('send')")


async def reply_count(page: Page) -> int:
    return int(await page.evaluate(f"{REPLIES}.length"))


async def test_typed_command_shows_its_reply(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h, chromium(tmp_path) as page:
        expected = text_of(await web_chat(h.url, "reference", "/help"))
        assert "/help" in expected
        await open_chat(page, h.url)
        await page.type("#input", "/help")
        await page.press_enter()
        shown = await page.wait_for(LAST_REPLY_DONE)
        assert shown == expected
        assert await page.evaluate("document.querySelector('.msg.me').textContent") == "/help"
        assert await page.evaluate("document.getElementById('input').value") == ""
        assert page.errors == []


async def test_send_button_and_a_later_message_with_an_image(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h, chromium(tmp_path) as page:
        await open_chat(page, h.url)
        await page.type("#input", "hello")
        await page.click("#send")
        await page.wait_for(LAST_REPLY_DONE)
        assert await reply_count(page) == 1

        # A message the hub sends later (a finished job) reaches the open page by its event stream.
        session = await page.evaluate("localStorage.getItem('hub.session')")
        later = Message.of(Image(data=png(64, 48), mime="image/png", name="piglet.png"), "Your image #7f3a is ready")
        await h.hub.outbox.put(NewMessage(ChatRef("web", "private", session), later))
        await page.wait_for(f"{REPLIES}.length === 2")
        assert (await page.evaluate(f"{REPLIES}[1].textContent")).strip() == "Your image #7f3a is ready"
        size = await page.wait_for(
            "(() => { const i = document.querySelector('.msg.bot img');"
            " return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null; })()"
        )
        assert size == [64, 48]
        assert page.errors == []


async def test_conversation_is_still_there_after_a_reload(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h, chromium(tmp_path) as page:
        await open_chat(page, h.url)
        await page.type("#input", "/help")
        await page.press_enter()
        before = await page.wait_for(LAST_REPLY_DONE)
        await open_chat(page, h.url)
        await page.wait_for(f"{REPLIES}.length === 1")
        assert await page.evaluate(f"{REPLIES}[0].textContent") == before
        assert await page.evaluate("document.querySelector('.msg.me').textContent") == "/help"


async def test_page_asks_once_for_the_token_of_a_guarded_hub(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, '[web]\ntoken = "env:WEB_TOKEN"\n', WEB_TOKEN="page-token-123")
    async with running_hub(settings) as h, chromium(tmp_path) as page:
        prompts: list[str] = []
        answers: list[asyncio.Task[object]] = []

        def answer(params: dict[str, object]) -> None:
            prompts.append(str(params.get("message")))
            reply = page.call("Page.handleJavaScriptDialog", accept=True, promptText="page-token-123")
            answers.append(asyncio.ensure_future(reply))

        page.on("Page.javascriptDialogOpening", answer)
        await open_chat(page, h.url)
        # The page's event stream meets the 401 first and asks; the answer is kept.
        await page.wait_for("localStorage.getItem('hub.token')")
        await page.type("#input", "/help")
        await page.press_enter()
        assert "Commands" in await page.wait_for(LAST_REPLY_DONE)
        assert len(prompts) == 1 and "token" in prompts[0]
        # Kept for later: the next message needs no prompt.
        await page.type("#input", "/help")
        await page.press_enter()
        await page.wait_for(f"{REPLIES}.length === 2 && !document.querySelector('.pending')")
        assert len(prompts) == 1
        assert await page.evaluate("localStorage.getItem('hub.token')") == "page-token-123"


async def test_page_fits_a_phone_screen(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h, chromium(tmp_path) as page:
        await page.viewport(390, 844, mobile=True, scale=2)
        await open_chat(page, h.url)
        long_word = "https://example.com/" + "a" * 300
        for sent, text in enumerate(("/help", long_word), start=1):
            await page.type("#input", text)
            await page.press_enter()
            await page.wait_for(f"{REPLIES}.length === {sent} && !document.querySelector('.pending')")
        # Nothing wider than the screen, the input and the button fully on it, the newest reply in view.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        for selector in ("#input", "#send"):
            box = await page.evaluate(
                f"(() => {{ const r = document.querySelector('{selector}').getBoundingClientRect();"
                " return [r.left, r.right, r.bottom]; })()"
            )
            assert box[0] >= 0 and box[1] <= 390 and box[2] <= 844, (selector, box)
        in_view = await page.evaluate(
            f"(() => {{ const r = {REPLIES}; const b = r[r.length - 1].getBoundingClientRect();"
            " const log = document.getElementById('log').getBoundingClientRect();"
            " return b.bottom <= log.bottom + 1; })()"
        )
        assert in_view
        assert page.errors == []


async def test_the_page_speaks_the_browsers_language_until_lang_changes_it(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h, chromium(tmp_path) as page:
        agent = await page.evaluate("navigator.userAgent")
        await page.call("Emulation.setUserAgentOverride", userAgent=agent, acceptLanguage="zh-CN,zh;q=0.9")
        await open_chat(page, h.url)
        words = "[document.documentElement.lang, document.getElementById('send').textContent,"
        words += " document.getElementById('input').placeholder]"
        assert await page.evaluate(words) == ["zh-CN", "发送", "消息"]
        assert await page.evaluate("document.querySelector('.hint').textContent") == "还没有消息。打个招呼吧！"
        await page.type("#input", "/help")
        await page.press_enter()
        assert "可用命令" in await page.wait_for(LAST_REPLY_DONE)
        # /lang en: the answers and the page's own words switch, without a reload.
        await page.type("#input", "/lang en")
        await page.press_enter()
        await page.wait_for(f"{REPLIES}.length === 2 && !document.querySelector('.pending')")
        await page.wait_for("document.getElementById('send').textContent === 'Send'")
        assert await page.evaluate(words) == ["en", "Send", "Message"]
        # A reload shows the session's language from the start, whatever the browser says.
        await page.goto(f"{h.url}/")
        assert await page.evaluate(words) == ["en", "Send", "Message"]
        # Too long to send: said before sending, in the page's language, and the text stays to be cut.
        await page.type("#input", "x" * (MAX_TEXT + 1))
        await page.press_enter()
        refusal = await page.wait_for("document.querySelector('.msg.bot.error')?.textContent")
        assert refusal == f"Not sent: a message can be at most {MAX_TEXT} characters long."
        assert await page.evaluate("document.getElementById('input').value.length") == MAX_TEXT + 1
        assert page.errors == []
