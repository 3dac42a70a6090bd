"""The server's own routes (/healthz, /metrics, /media) and its error middleware."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pyexpat import ExpatError

from aiohttp import web
from pydantic import SecretStr
from sqlalchemy import text

from hub.auth import bearer_matches
from hub.errors import BadPayload, VerificationFailed
from hub.inbound import IngressClosed
from hub.metrics import Metrics
from hub.storage.db import Database
from hub.storage.inbox import InboxRepo
from hub.storage.media import MediaStore
from hub.storage.outbox import OutboxRepo

log = logging.getLogger("hub.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad input gets a 4xx with a short reason; nothing a client sends gives a 500."""
    try:
        return await handler(request)
    except VerificationFailed as exc:
        log.warning("event=verification_failed path=%s reason=%s", request.path, exc)
        return web.json_response({"error": str(exc)}, status=exc.status)
    except BadPayload as exc:
        log.info("event=bad_payload path=%s reason=%s", request.path, exc)
        return web.json_response({"error": str(exc)}, status=400)
    except IngressClosed:
        return web.json_response({"error": "shutting down, try again"}, status=503)
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": f"body larger than {request.client_max_size} bytes"}, status=413)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.empty_body is False and exc.content_type != "application/json":
            reason = "no such path" if exc.status == 404 else exc.reason
            return web.json_response({"error": reason}, status=exc.status, headers=_allow(exc))
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError, ExpatError) as exc:
        # A parser a handler called directly rather than through hub.channels.payload.
        log.info("event=bad_payload path=%s reason=%r", request.path, exc)
        return web.json_response({"error": "malformed request body"}, status=400)


def _allow(exc: web.HTTPException) -> Mapping[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


class ServerRoutes:
    def __init__(
        self,
        *,
        db: Database,
        metrics: Metrics,
        media: MediaStore,
        inbox: InboxRepo,
        outbox: OutboxRepo,
        channel_status: Callable[[], Mapping[str, str]],
        metrics_token: SecretStr | None = None,
    ) -> None:
        self._metrics_token = metrics_token
        self._db = db
        self._metrics = metrics
        self._media = media
        self._inbox = inbox
        self._outbox = outbox
        self._channel_status = channel_status
        self._started = time.monotonic()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/metrics", self.metrics),
            web.get("/media/{media_id}", self.media),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            async with self._db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            db_ok = True
        except Exception as exc:
            log.warning("event=health_db_failed error=%r", exc)
            db_ok = False
        body = {
            "status": "ok" if db_ok else "degraded",
            "database": "ok" if db_ok else "unreachable",
            "uptime_s": round(time.monotonic() - self._started, 1),
            "channels": dict(self._channel_status()),
        }
        return web.json_response(body, status=200 if db_ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        if self._metrics_token is not None and not bearer_matches(
            request.headers.get("Authorization"), self._metrics_token
        ):
            return web.json_response({"error": "missing or wrong token"}, status=401)
        try:
            self._metrics.inbox_backlog.set(await self._inbox.backlog())
            self._metrics.outbox_backlog.set(await self._outbox.backlog())
        except Exception as exc:
            log.warning("event=metrics_backlog_failed error=%r", exc)
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def media(self, request: web.Request) -> web.StreamResponse:
        stored = await self._media.get(request.match_info["media_id"])
        if stored is None:
            return web.json_response({"error": "no such media (it may have expired)"}, status=404)
        # Served from the hub's own origin, where the page keeps its token: only what the skill
        # asked for (an image, a video, a sound) is shown inline, nothing is sniffed, and even
        # that runs sandboxed, so a provider answering HTML gets no script on this origin.
        headers = {
            "Cache-Control": "private, max-age=86400",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
        }
        safe = "".join(c for c in stored.name or "" if c.isprintable() and c not in '"\\;')
        mime = inline_type(stored.kind, stored.mime)
        if mime is not None:
            headers["Content-Type"] = mime
            headers["Content-Disposition"] = f'inline; filename="{safe}"' if safe else "inline"
        else:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Disposition"] = f'attachment; filename="{safe}"' if safe else "attachment"
        return web.FileResponse(stored.path, headers=headers)


def inline_type(kind: str | None, mime: str | None) -> str | None:
    """The type to show stored media inline as: only of the kind asked for; else None."""
    if kind not in ("image", "video", "audio") or not mime:
        return None
    mime = mime.split(";")[0].strip().lower()
    ok = mime.startswith(f"{kind}/") and mime.isascii() and mime.isprintable() and " " not in mime
    # SVG is an image that can carry script.
    return mime if ok and mime != "image/svg+xml" else None
