"""The delivery API: other systems send to any chat through the outbox (`/api/v1/...`).

Every message goes through the outbox like a reply, so it is sent once or its failure
recorded. `Idempotency-Key` maps onto the outbox's own unique key: the same key with the same
body answers the first 202 again (from any process), with another body 409.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import BodyPartReader, web

from hub.channels.base import Channel
from hub.delivery import Outbox
from hub.events import Audio, ChatRef, File, Image, Message, Segment, Text, Video
from hub.metrics import Metrics
from hub.settings import CHANNEL_NAMES, ApiSettings
from hub.storage.deliveries import DeliveryRepo
from hub.storage.media import MediaStore, MediaTooLarge
from hub.storage.outbox import NewMessage

log = logging.getLogger("hub.api")

MEDIA_TYPES: Mapping[str, type[Image] | type[Video] | type[Audio] | type[File]] = {
    "image": Image,
    "video": Video,
    "audio": Audio,
    "file": File,
}
TEXT_MAX = 100_000
KEY_MAX = 200
STATUS = {"pending": "queued", "sent": "sent", "failed": "failed", "waiting": "waiting"}


class Invalid(Exception):
    """Bad input, answered 400 `{"error", "field"}`."""

    def __init__(self, error: str, field: str | None) -> None:
        super().__init__(error)
        self.error = error
        self.field = field


@dataclass(frozen=True, slots=True)
class Request:
    to: ChatRef
    text: str
    media: tuple[tuple[str, str, str], ...]  # (type, "url" | "media_id", value)

    def digest(self) -> str:
        canon = json.dumps([str(self.to), self.text, self.media], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


def can_show(limits_media: Mapping[str, int], kind: str, can_link: bool) -> bool:
    """Whether a channel can show a media kind at all: natively, or as a link to /media."""
    return not limits_media or kind in limits_media or can_link


def parse_request(body: Any, channels: Mapping[str, Channel], can_link: bool) -> Request:
    """Validate a message request against the enabled channels; raise Invalid naming the field."""
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object", None)
    unknown = sorted(set(body) - {"to", "text", "media"})
    if unknown:
        raise Invalid(f"unknown field {unknown[0]!r}", unknown[0])
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise Invalid("required: the chat to send to, as <channel>:<kind>:<chat_id>", "to")
    try:
        ref = ChatRef.parse(to)
    except ValueError as exc:
        raise Invalid(str(exc), "to") from None
    if ref.channel not in CHANNEL_NAMES and ref.channel not in channels:
        raise Invalid(f"unknown channel {ref.channel!r}", "to")
    channel = channels.get(ref.channel)
    if channel is None:
        raise Invalid(f"the {ref.channel} channel is not enabled on this hub", "to")
    text = body.get("text", "")
    if not isinstance(text, str):
        raise Invalid("must be a string", "text")
    if len(text) > TEXT_MAX:
        raise Invalid(f"longer than {TEXT_MAX} characters", "text")
    raw_media = body.get("media", [])
    if not isinstance(raw_media, list) or len(raw_media) > 10:
        raise Invalid("must be a list of at most 10 items", "media")
    media = tuple(_parse_media(i, item, channel, can_link) for i, item in enumerate(raw_media))
    if not text.strip() and not media:
        raise Invalid("nothing to send: give text, media or both", "text")
    return Request(ref, text, media)


def _parse_media(i: int, item: Any, channel: Channel, can_link: bool) -> tuple[str, str, str]:
    where = f"media.{i}"
    if not isinstance(item, dict) or set(item) - {"type", "url", "media_id"}:
        raise Invalid('each item is {"type": ..., "url": ...} or {"type": ..., "media_id": ...}', where)
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in MEDIA_TYPES:
        raise Invalid("type must be image, video, audio or file", f"{where}.type")
    if not can_show(channel.limits.media_max, kind, can_link):
        raise Invalid(f"the {channel.name} channel cannot show {kind} (and [http] public_url is not set)", where)
    url, media_id = item.get("url"), item.get("media_id")
    if (url is None) == (media_id is None):
        raise Invalid("give exactly one of url and media_id", where)
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
            raise Invalid("must be an http(s) URL", f"{where}.url")
        return (kind, "url", url)
    if not isinstance(media_id, str) or not media_id.isalnum() or len(media_id) > 32:
        raise Invalid("not a media id from POST /api/v1/media", f"{where}.media_id")
    return (kind, "media_id", media_id)


class RateLimit:
    """A token bucket per API token: `per_minute` sustained, the same as a burst."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._cap = float(per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when allowed; else the seconds until the next call would be."""
        now = self._clock()
        level, at = self._buckets.get(key, (self._cap, now))
        level = min(self._cap, level + (now - at) * self._rate)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            return 0.0
        self._buckets[key] = (level, now)
        return (1.0 - level) / self._rate if self._rate > 0 else 60.0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DeliveryApi:
    def __init__(
        self,
        settings: ApiSettings,
        *,
        outbox: Outbox,
        deliveries: DeliveryRepo,
        media: MediaStore,
        channels: Mapping[str, Channel],
        metrics: Metrics,
        public_url: str | None,
    ) -> None:
        self._token = settings.token.get_secret_value().encode() if settings.token else None
        self._max_media = settings.max_media_mb * 1024 * 1024
        self._rate = RateLimit(settings.rate_per_minute)
        self._outbox = outbox
        self._deliveries = deliveries
        self._media = media
        self._channels = channels
        self._metrics = metrics
        self._can_link = bool(public_url)

    def routes(self) -> list[web.RouteDef]:
        if self._token is None:
            return []  # no token, no API: its paths answer 404
        return [
            web.post("/api/v1/messages", self._guard(self.post_message, limited=True)),
            web.get("/api/v1/messages/{id}", self._guard(self.get_message, limited=False)),
            web.post("/api/v1/media", self._guard(self.post_media, limited=True)),
        ]

    def _guard(self, handler: Handler, *, limited: bool) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            presented = _bearer(request.headers.get("Authorization", ""))
            assert self._token is not None
            if presented is None or not hmac.compare_digest(presented, self._token):
                self._count("unauthorized")
                return web.json_response(
                    {"error": "a valid Authorization: Bearer <[api] token> is required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="hub"'},
                )
            if limited:
                wait = self._rate.take("token")
                if wait > 0:
                    self._count("rate_limited")
                    retry = str(max(1, int(wait + 0.999)))
                    return web.json_response(
                        {"error": f"rate limit reached, retry in {retry} s"}, status=429, headers={"Retry-After": retry}
                    )
            try:
                return await handler(request)
            except Invalid as exc:
                self._count("invalid")
                return web.json_response({"error": exc.error, "field": exc.field}, status=400)

        return guarded

    def _count(self, status: str) -> None:
        self._metrics.api_messages.labels(status=status).inc()

    async def post_message(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            raise Invalid("the body must be application/json", None)
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):
            raise Invalid("the body is not valid JSON", None) from None
        req = parse_request(body, self._channels, self._can_link)
        key = request.headers.get("Idempotency-Key")
        if key is not None and (not key or len(key) > KEY_MAX or not key.isascii() or not key.isprintable()):
            raise Invalid(f"Idempotency-Key must be 1 to {KEY_MAX} printable ASCII characters", "Idempotency-Key")
        message = await self._message(req)
        digest = req.digest()
        item_id = await self._outbox.put(
            NewMessage(
                target=req.to,
                message=message,
                origin="api",
                context={"api_digest": digest},
                idempotency_key=f"api:{key}" if key is not None else None,
            )
        )
        if key is not None:
            stored = await self._deliveries.digest_of(item_id)
            if stored != digest:
                self._count("conflict")
                return web.json_response(
                    {"error": "this Idempotency-Key was used with another body", "id": str(item_id)}, status=409
                )
        self._count("queued")
        log.info("event=api_message_queued id=%d to=%s media=%d", item_id, req.to, len(req.media))
        return web.json_response({"id": str(item_id), "status": "queued"}, status=202)

    async def _message(self, req: Request) -> Message:
        segments: list[Segment] = [Text(req.text)] if req.text.strip() else []
        for i, (kind, how, value) in enumerate(req.media):
            cls = MEDIA_TYPES[kind]
            if how == "url":
                segments.append(cls(url=value))
                continue
            stored = await self._media.get(value)
            if stored is None:
                raise Invalid("no such media (it may have expired)", f"media.{i}.media_id")
            segments.append(cls(path=str(stored.path), name=stored.name, mime=stored.mime, size=stored.size))
        return Message(tuple(segments))

    async def get_message(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        found = await self._deliveries.get(int(raw)) if raw.isdigit() and len(raw) < 19 else None
        if found is None:
            return web.json_response({"error": "no such message"}, status=404)
        return web.json_response(
            {
                "id": str(found.id),
                "to": found.target,
                "status": STATUS.get(found.status, found.status),
                "attempts": found.attempts,
                "error": found.error,
                "sent_at": found.sent_at.isoformat() if found.sent_at else None,
            }
        )

    async def post_media(self, request: web.Request) -> web.Response:
        if request.content_type != "multipart/form-data":
            raise Invalid("upload the file as multipart/form-data", None)
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and not (isinstance(part, BodyPartReader) and part.filename):
            part = await reader.next()
        if part is None or not isinstance(part, BodyPartReader):
            raise Invalid("no file in the upload", "file")
        name = part.filename
        mime = part.headers.get("Content-Type") or mimetypes.guess_type(name or "")[0]
        major = mime.split("/", 1)[0] if mime else ""
        kind = major if major in ("image", "video", "audio") else "file"
        try:
            stored = await self._media.save_stream(
                _chunks(part), max_bytes=self._max_media, name=name, mime=mime, kind=kind
            )
        except MediaTooLarge:
            return web.json_response({"error": f"larger than [api] max_media_mb ({self._max_media} bytes)"}, status=413)
        return web.json_response({"media_id": stored.id, "size": stored.size})


async def _chunks(part: BodyPartReader) -> Any:
    while chunk := await part.read_chunk(64 * 1024):
        yield chunk
    if not part.at_eof():
        # The body ended before the part's closing boundary: a cut-off upload, not a file.
        raise Invalid("the upload was cut off before its closing boundary", "file")


def _bearer(header: str) -> bytes | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    try:
        return value.strip().encode("ascii")
    except UnicodeEncodeError:
        return None
