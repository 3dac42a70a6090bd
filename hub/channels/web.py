"""The web chat: one page, a streamed answer per message, and a stream of later messages."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from hub.auth import bearer_matches
from hub.channels.base import Channel, ChannelLimits, LiveSink, SendRequest, SendResult
from hub.channels.parts import MediaLinks
from hub.channels.payload import parse_json
from hub.events import Audio, ChatRef, Event, File, Image, Message, Text, User, Video
from hub.i18n import N_, Lang, texts
from hub.i18n.language import ChatLanguages, from_accept_language, platform_languages
from hub.settings import HttpSettings, WebSettings, is_loopback_host
from hub.storage.media import MediaStore
from hub.storage.web_events import WebEventRepo

log = logging.getLogger("hub.web")
PAGE = Path(__file__).parent / "static" / "web.html"
SESSION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_TEXT = 16000
KEEPALIVE_S = 15.0

SubmitAndWait = Callable[[Event, LiveSink], Awaitable[bool]]

# The page's own words, by the name the page uses for each (`{{name}}` in static/web.html).
# A `%(name)s` in one is filled by the page.
LABELS = {
    "subtitle": N_("Send /help to see what I can do."),
    "message": N_("Message"),
    "send": N_("Send"),
    "empty": N_("No messages yet. Say hello!"),
    "token": N_("This hub needs its access token:"),
    "no_token": N_("Not sent: this hub needs its access token. Reload the page to enter it."),
    "restarting": N_("Not sent: the hub is restarting. Try again in a moment."),
    "not_sent": N_("Not sent: %(reason)s"),
    "lost": N_("Connection lost. If the message went through, the answer will appear here."),
    "image": N_("image"),
    "download": N_("download"),
    "gone_image": N_("(image no longer available)"),
    "gone_video": N_("(video no longer available)"),
    "gone_audio": N_("(audio no longer available)"),
}
HTML_LANG: dict[Lang, str] = {"zh": "zh-CN", "en": "en"}
LABEL_RE = re.compile(r"\{\{(\w+)\}\}")


def labels(lang: Lang) -> dict[str, str]:
    """The page's words in one language, and what it checks before sending."""
    t = texts(lang)
    out = {name: t(msgid) for name, msgid in LABELS.items()}
    out["too_long"] = t.plural(
        "Not sent: a message can be at most %(n)s character long.",
        "Not sent: a message can be at most %(n)s characters long.",
        MAX_TEXT,
    )
    out["lang"] = HTML_LANG[lang]
    out["max_text"] = str(MAX_TEXT)
    return out


def page_in(template: str, lang: Lang) -> bytes:
    """The page with its words in `lang`: in the markup, and as JSON for what its script writes."""
    words = labels(lang)
    # `<` escaped: no text can end the script element it is in.
    data = json.dumps(words, ensure_ascii=False).replace("<", "\\u003c")

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        return data if name == "labels" else html.escape(words.get(name, m.group(0)))

    return LABEL_RE.sub(fill, template).encode()


def sse(data: dict[str, Any] | str) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {body}\n\n".encode()


class _SseSink:
    """The live answer to one POST: chunks and media straight onto the response.

    The response starts with its first write (a chunk, a keep-alive, the end): its headers then
    go out in the same packet as the first token, and a refusal before any (the hub is
    stopping) still gets its own status.
    """

    def __init__(
        self,
        response: web.StreamResponse,
        render: Callable[[Message], Awaitable[list[dict[str, Any]]]],
        request: web.Request,
    ) -> None:
        self._response = response
        self._request = request
        self._render = render
        self._open = True
        self._lock = asyncio.Lock()

    @property
    def open(self) -> bool:
        # A reader that went away after the last write (a reload) has not seen the end: the
        # stream is then finished through the outbox, which reaches the page's event stream.
        if self._request.transport is None or self._request.transport.is_closing():
            self._open = False
        return self._open

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            try:
                if not self._response.prepared:
                    await self._response.prepare(self._request)
                await self._response.write(data)
            except (ConnectionError, RuntimeError):
                self._open = False
                raise

    async def text(self, delta: str) -> None:
        await self._write(sse({"content": delta}))

    async def message(self, message: Message) -> None:
        for item in await self._render(message):
            await self._write(sse(item))

    async def comment(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._write(b": keep-alive\n\n")

    async def done(self) -> web.StreamResponse:
        """The end of the answer; the response, started now if nothing was written before."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._write(sse("[DONE]"))
        return self._response


class WebChannel(Channel):
    name = "web"
    limits = ChannelLimits(text_max=100_000, caption_max=100_000, can_edit=False, can_quote=False)

    def __init__(
        self,
        settings: WebSettings,
        *,
        events: WebEventRepo,
        media: MediaStore,
        submit_and_wait: SubmitAndWait,
        http: HttpSettings | None = None,
        languages: ChatLanguages | None = None,
    ) -> None:
        self._settings = settings
        self._languages = languages or platform_languages()
        self._pages: dict[Lang, bytes] = {}
        self._http = http or HttpSettings()
        public = urlsplit(self._http.public_url) if self._http.public_url else None
        self._public_host = (public.hostname or "").lower() if public else None
        self._public_origin = _origin_of(public.scheme, public.netloc) if public else None
        self._events = events
        # Links relative to the hub: the page is served from it.
        self._links = MediaLinks(media, "")
        self._submit_and_wait = submit_and_wait
        self._streams: set[web.StreamResponse] = set()
        self._closing = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page),
            web.post("/api/web/chat", self.chat),
            web.get("/api/web/events", self.events),
            web.get("/api/web/labels", self.page_labels),
        ]

    async def stop(self) -> None:
        # Open event streams would hold the server's shutdown: end them.
        self._closing.set()
        self._events.wake_all()

    # --- HTTP handlers ------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        if not self._host_ok(request):
            return _wrong_host()
        # Before the page names its session: the language a new chat from this browser gets.
        lang = await self._languages.of_new_chat("web", from_accept_language(request.headers.get("Accept-Language")))
        body = self._pages.get(lang)
        if body is None:
            body = self._pages[lang] = page_in(await asyncio.to_thread(PAGE.read_text, "utf-8"), lang)
        return web.Response(
            body=body,
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Cache-Control": "no-cache",
                "Vary": "Accept-Language",
            },
        )

    def _session_of(self, request: web.Request) -> str | web.StreamResponse:
        """The `session` of a GET the page makes, or the refusal to answer instead."""
        refused = self._refusal(request)
        if refused is not None:
            return refused
        if not self._origin_ok(request):
            # Reading the stream marks its messages delivered: another site's page must not.
            return web.json_response({"error": "cross-site request refused"}, status=403)
        session = request.query.get("session", "")
        if not SESSION_RE.match(session):
            return web.json_response({"error": "session must be 1-128 characters of A-Z a-z 0-9 _ . -"}, status=400)
        return session

    async def page_labels(self, request: web.Request) -> web.StreamResponse:
        """The page's words in its session's language (which `/lang` may have changed)."""
        session = self._session_of(request)
        if not isinstance(session, str):
            return session
        hint = from_accept_language(request.headers.get("Accept-Language"))
        lang = await self._languages.of_chat(str(ChatRef("web", "private", session)), hint)
        return web.json_response(labels(lang), headers={"Cache-Control": "no-cache"})

    def _authorized(self, request: web.Request) -> bool:
        if self._settings.token is None:
            return True
        # Header only: a token in the URL would end up in access logs and proxies.
        return bearer_matches(request.headers.get("Authorization"), self._settings.token)

    def _host_ok(self, request: web.Request) -> bool:
        """Without a token, only the hub's own names reach the page (no DNS rebinding)."""
        if self._settings.token is not None:
            return True
        header = request.headers.get("Host")
        if header is None:
            return True  # HTTP/1.0 without Host: no browser, nothing to rebind
        try:
            parts = urlsplit(f"//{header}")
            name, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            return False
        if name and name == self._public_host:
            return True
        sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
        bound_host, bound_port = (str(sock[0]).lower(), int(sock[1])) if sock else ("", None)
        ours = name in (self._http.host.lower(), bound_host) or (self._http.is_loopback and is_loopback_host(name))
        return ours and (port == bound_port or (port is None and bound_port == 80))

    def _origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser's cross-site request
        origin = origin.strip().lower()
        host = request.headers.get("Host", "").lower()
        return origin in (self._public_origin, f"http://{host}", f"https://{host}")

    def _context(self, request: web.Request) -> dict[str, object]:
        context: dict[str, object] = {}
        # Only a request that carried the token gets here when a token is set.
        if self._settings.token_is_admin and self._settings.token:
            context["web_admin"] = True
        # The browser's language: the chat's language where nothing else chose one.
        lang = from_accept_language(request.headers.get("Accept-Language"))
        if lang is not None:
            context["lang"] = lang
        return context

    def _refusal(self, request: web.Request) -> web.StreamResponse | None:
        """The answer to a request for the page's API that may not go on, else None."""
        if not self._host_ok(request):
            return _wrong_host()
        if not self._authorized(request):
            return web.json_response({"error": "missing or wrong token"}, status=401)
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        if not self._origin_ok(request):
            return web.json_response({"error": "cross-site request refused"}, status=403)
        if request.content_type != "application/json":
            return web.json_response({"error": "body must be application/json"}, status=415)
        body = parse_json(await request.read())  # BadPayload: 400 from the error middleware
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        session, text = body.get("session"), body.get("text")
        if not isinstance(session, str) or not SESSION_RE.match(session):
            return web.json_response({"error": "session must be 1-128 characters of A-Z a-z 0-9 _ . -"}, status=400)
        if not isinstance(text, str) or not text.strip():
            return web.json_response({"error": "text must be a non-empty string"}, status=400)
        if len(text) > MAX_TEXT:
            return web.json_response({"error": f"text longer than {MAX_TEXT} characters"}, status=400)
        event_id = body.get("id")
        if event_id is not None and (not isinstance(event_id, str) or not SESSION_RE.match(event_id)):
            return web.json_response({"error": "id must be 1-128 characters of A-Z a-z 0-9 _ . -"}, status=400)
        event = Event(
            id=event_id or uuid.uuid4().hex,
            channel="web",
            chat=ChatRef("web", "private", session),
            sender=User("web", session, "web user"),
            message=Message((Text(text),)),
            context=self._context(request),
        )
        sink = _SseSink(_sse_response(), self.render, request)
        keepalive = asyncio.create_task(_keepalive(sink))
        try:
            await self._submit_and_wait(event, sink)
        finally:
            keepalive.cancel()
        return await sink.done()

    async def events(self, request: web.Request) -> web.StreamResponse:
        session = self._session_of(request)
        if not isinstance(session, str):
            return session
        response = _sse_response()
        await response.prepare(request)
        waiter = self._events.waiter(session)
        try:
            await response.write(b": connected\n\n")
            while not self._closing.is_set():
                waiter.clear()
                # A page that went away (a reload) leaves its stream waiting here: it must not
                # take the messages its successor is waiting for.
                if request.transport is None or request.transport.is_closing():
                    break
                await self._deliver(response, await self._events.claim(session))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout=KEEPALIVE_S)
                if not waiter.is_set():
                    await response.write(b": keep-alive\n\n")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._events.release(session, waiter)
        return response

    async def _deliver(self, response: web.StreamResponse, claimed: list[tuple[int, list[dict[str, Any]]]]) -> None:
        """Write claimed messages; what could not be written is given back for the next stream."""
        for n, (_row_id, items) in enumerate(claimed):
            try:
                await response.write(b"".join(sse(i) for i in items) + sse("[DONE]"))
            except (ConnectionError, RuntimeError):
                await self._events.give_back([row_id for row_id, _ in claimed[n:]])
                raise

    # --- sending ------------------------------------------------------------------------

    async def render(self, message: Message) -> list[dict[str, Any]]:
        """A message as SSE items: media first, then its text as `content`."""
        items: list[dict[str, Any]] = []
        texts: list[str] = []
        for seg in message.segments:
            if isinstance(seg, Image | Video | Audio | File):
                items.append({"media": await self._media_item(seg)})
                if seg.caption:
                    texts.append(seg.caption)
            elif isinstance(seg, Text):
                texts.append(seg.text)
        text = "".join(texts).strip()
        if text:
            items.append({"content": text})
        return items

    async def _media_item(self, seg: Image | Video | Audio | File) -> dict[str, Any]:
        item: dict[str, Any] = {"type": seg.kind, "url": await self._links.link(seg)}
        if seg.name:
            item["name"] = seg.name
        return item

    async def send(self, request: SendRequest) -> SendResult:
        items = await self.render(request.message)
        if not items:
            return SendResult()
        row_id = await self._events.add(request.target.chat_id, items)
        return SendResult((str(row_id),))


def _origin_of(scheme: str, netloc: str) -> str:
    """A URL's origin as a browser writes it: the default port left out."""
    netloc = netloc.lower().rpartition("@")[2]
    default = {"http": ":80", "https": ":443"}.get(scheme.lower(), "")
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return f"{scheme.lower()}://{netloc}"


def _wrong_host() -> web.Response:
    return web.json_response({"error": "this hub does not answer to that host name"}, status=421)


def _sse_response() -> web.StreamResponse:
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )


async def _keepalive(sink: _SseSink) -> None:
    while True:
        await asyncio.sleep(KEEPALIVE_S)
        await sink.comment()
