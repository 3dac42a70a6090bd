"""OneBot v11 (NapCat, Lagrange, LLOneBot): the reverse WebSocket at /onebot/v11/ws, HTTP POST
events at /onebot/v11/http, and actions out over the account's socket or the HTTP API.

Every event is stored in the inbox (deduplicated on self_id + message_id) before the HTTP POST
is answered (204, no quick operation: replies go through the outbox like every reply). Several
accounts may connect at once; each ChatRef carries its account, and a reply goes back through
the socket of that account, else `api_base`, else it waits in the outbox for the account to
connect again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import WSMsgType, web

from hub.channels.base import Channel, ChannelLimits, Ingress, SendRequest, SendResult
from hub.channels.onebot.actions import check_answer, send_action, sent_id, split_chat
from hub.channels.onebot.auth import check_signature, check_token
from hub.channels.onebot.connections import Connection, NotConnected, Registry
from hub.channels.onebot.http_api import HttpApi
from hub.channels.onebot.parse import CHANNEL, Ignored, number_id, parse_event
from hub.channels.onebot.render import MB, Renderer, describe
from hub.channels.onebot.sent import SentIds
from hub.channels.parts import send_parts
from hub.channels.payload import parse_object
from hub.errors import BadPayload, HubError
from hub.events import ChatRef, Event
from hub.i18n.language import ChatLanguages
from hub.settings import OneBotSettings
from hub.storage.media import MediaStore

log = logging.getLogger("hub.onebot")

TEXT_MAX = 3000  # characters; QQ takes about 4,500, a margin for the implementations' own
WS_PATH = "/onebot/v11/ws"
HTTP_PATH = "/onebot/v11/http"
# Sender roles (parse keeps them as context["group_role"]) of a group's own admins.
GROUP_ADMIN_ROLES = frozenset({"owner", "admin"})


class OneBotChannel(Channel):
    name = CHANNEL
    limits = ChannelLimits(
        text_max=TEXT_MAX,
        caption_max=TEXT_MAX,
        media_max={"image": 30 * MB, "audio": 30 * MB, "video": 100 * MB, "file": 100 * MB},
        can_quote=True,
    )

    def __init__(
        self,
        settings: OneBotSettings,
        *,
        ingress: Ingress,
        media: MediaStore,
        public_url: str | None,
        max_frame_bytes: int = MB,
        action_timeout_s: float = 30.0,
        on_connect: Callable[[str], Awaitable[None]] | None = None,
        recent_sent: Callable[[], Awaitable[Sequence[tuple[ChatRef, Sequence[str]]]]] | None = None,
        languages: ChatLanguages | None = None,
    ) -> None:
        self._ingress = ingress
        self._token = settings.access_token.get_secret_value() if settings.access_token else None
        self._secret = settings.secret.get_secret_value() if settings.secret else None
        self._api = HttpApi(settings.api_base, self._token) if settings.api_base else None
        self._renderer = Renderer(media, public_url, text_max=TEXT_MAX, languages=languages)
        self._max_frame = max_frame_bytes
        self._timeout = action_timeout_s
        self._on_connect = on_connect
        self._recent_sent = recent_sent
        self.connections = Registry()
        self.sent = SentIds()

    def routes(self) -> list[web.RouteDef]:
        return [web.get(WS_PATH, self.websocket), web.post(HTTP_PATH, self.http_post)]

    async def start(self) -> None:
        if self._api is not None:
            await self._api.start()
        if self._recent_sent is not None:
            # A reply to what the bot sent before a restart still addresses it.
            for target, ids in reversed(await self._recent_sent()):
                self_id = target.chat_id.partition("/")[0]
                for mid in ids:
                    self.sent.add(self_id, mid)

    async def stop(self) -> None:
        # Open sockets would hold the server's shutdown; the implementations reconnect.
        await self.connections.close_all()

    async def close(self) -> None:
        if self._api is not None:
            await self._api.stop()

    def status(self) -> str:
        return "running" if self.connections.accounts or self._api is not None else "connecting"

    async def is_group_admin(self, event: Event) -> bool:
        # The implementation tells each group message's sender role (owner, admin, member);
        # it is as trustworthy as the connection it came by (access_token, HMAC).
        return event.chat.kind == "group" and event.context.get("group_role") in GROUP_ADMIN_ROLES

    # --- in: HTTP POST ----------------------------------------------------------------------

    async def http_post(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = await request.read()
        check_signature(request, body, self._secret)
        payload = parse_object(body)
        header_id = request.headers.get("X-Self-ID")
        if header_id is not None and header_id.strip() != str(payload.get("self_id")):
            raise BadPayload("X-Self-ID does not match the event's self_id")
        await self._ingest(payload, "http", started)
        return web.Response(status=204)

    async def _ingest(self, payload: dict[str, Any], via: str, started: float) -> None:
        """Store a message event (deduplicated); other events are recognised and let go."""
        parsed = parse_event(payload, self.sent)
        if isinstance(parsed, Ignored):
            if parsed.self_id and parsed.own_message_id:
                self.sent.add(parsed.self_id, parsed.own_message_id)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("event=onebot_ignored via=%s reason=%s", via, parsed.reason)
            return
        new = await self._ingress.submit(parsed)
        # Per event, so debug: at thousands a second an info line each cost more than parsing the event.
        if log.isEnabledFor(logging.DEBUG):
            ms = (time.perf_counter() - started) * 1000
            log.debug("event=onebot_in via=%s id=%s chat=%s new=%s ms=%.1f", via, parsed.id, parsed.chat, new, ms)

    # --- in: the reverse WebSocket ----------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        check_token(request, self._token)
        self_id = number_id(request.headers.get("X-Self-ID"), "X-Self-ID header")
        # NapCat, Lagrange and LLOneBot dial one Universal socket: events in, actions out.
        role = request.headers.get("X-Client-Role", "Universal")[:16]
        ws = web.WebSocketResponse(max_msg_size=self._max_frame, heartbeat=30.0, timeout=3.0)
        await ws.prepare(request)
        conn = Connection(self_id, ws)
        self.connections.attach(conn)
        log.info("event=onebot_connected self_id=%s role=%s", self_id, role)
        if self._on_connect is not None:
            try:
                await self._on_connect(self_id)
            except Exception:
                log.exception("event=onebot_on_connect_failed self_id=%s", self_id)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._frame(conn, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.connections.detach(conn)
            log.info("event=onebot_disconnected self_id=%s code=%s", self_id, ws.close_code)
        return ws

    async def _frame(self, conn: Connection, data: str) -> None:
        try:
            payload = parse_object(data)
            if "post_type" not in payload:
                if not conn.answer(payload):
                    log.info("event=onebot_stray_answer self_id=%s", conn.self_id)
                return
            if str(payload.get("self_id")) != conn.self_id:
                raise BadPayload("an event of another account on this socket")
            await self._ingest(payload, "ws", time.perf_counter())
        except HubError as exc:  # bad frames are dropped, the socket stays
            log.info("event=onebot_bad_frame self_id=%s reason=%s", conn.self_id, exc)
        except Exception:
            log.exception("event=onebot_frame_failed self_id=%s", conn.self_id)

    # --- out --------------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendResult:
        target = request.target
        self_id, _ = split_chat(target)
        parts = await self._renderer.render(request.message, _quoted(request.quote, self_id), request)

        async def one(_index: int, part: Any) -> str | None:
            _, action, params = send_action(target, part)
            mid = sent_id(await self.call(self_id, action, params))
            if mid is not None:
                self.sent.add(self_id, mid)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("event=onebot_out self_id=%s action=%s parts=%s", self_id, action, describe(part))
            return mid

        return SendResult(tuple(await send_parts(parts, request, one)))

    async def call(self, self_id: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """An action through the account's socket, else the HTTP API, else NotConnected."""
        conn = self.connections.get(self_id)
        if conn is not None:
            return check_answer(action, await conn.call(action, params, self._timeout))
        if self._api is not None:
            return check_answer(action, await self._api.call(action, params))
        raise NotConnected(self_id)


def _quoted(quote: str | None, self_id: str) -> str | None:
    """The message id in an event id `<self_id>/<message_id>` of this account."""
    if not quote:
        return None
    account, sep, mid = quote.partition("/")
    return mid if sep and account == self_id and mid else None
