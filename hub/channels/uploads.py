"""Media parts uploaded first, or links when too large: for the platforms that take an upload
and send its id (WeChat and WeCom, Feishu).

A message becomes an ordered list of parts (parts.render), one platform call each (so a retried
send can skip the parts already out). A part is prepared into its wire form, a small JSON-able dict:
`{"msgtype": "text", "text": ...}`, `{"msgtype": "image" | "voice" | "file", "media_id": ...}`,
`{"msgtype": "video", "media_id", "title", "description"}`. Media larger than the platform
takes (or in a form it cannot play) goes as a text with a one-line note and a link to
`<public_url>/media/<id>`.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hub.channels.base import SendRequest
from hub.channels.parts import CANNOT_SEND, EXPIRED, TOO_LARGE, UNTITLED_VIDEO, MediaLinks, Part
from hub.errors import SendError
from hub.events import Media
from hub.fetch import Fetcher, FetchError, FetchTooLarge
from hub.i18n import texts
from hub.i18n.language import ChatLanguages
from hub.storage.media import MediaStore

MB = 1024 * 1024
DEFAULT_EXT = {"image": ".jpg", "voice": ".mp3", "video": ".mp4", "file": ".bin"}
DEFAULT_MIME = {"image": "image/jpeg", "voice": "audio/mpeg", "video": "video/mp4", "file": "application/octet-stream"}
VOICE_MAX_S = 60.0
DOWNLOAD_TIMEOUT_S = 180.0


class Uploader(Protocol):
    """What the preparer needs of a platform API (WeChatApi has it; Feishu's maps the kinds)."""

    async def upload(self, kind: str, data: bytes, filename: str, mime: str) -> str:
        """Upload media of a platform type (image, voice, video, file); its platform id."""
        ...


@dataclass(frozen=True, slots=True)
class _Loaded:
    data: bytes | None  # None: too large to load (size says how large, when known)
    size: int | None


class MediaPreparer:
    """Uploads media parts to the platform, or turns them into links when they do not fit.

    `limits` maps a platform media type (image, voice, video, file) to its largest upload;
    a type missing from it cannot be sent (Official Accounts have no file message).
    `voice_formats` are the audio formats a voice message takes; other audio goes as a file
    where the platform has files, else as a link.
    """

    def __init__(
        self,
        api: Uploader,
        media: MediaStore,
        public_url: str | None,
        *,
        limits: Mapping[str, int],
        voice_formats: frozenset[str],
        fetcher: Fetcher,
        languages: ChatLanguages | None = None,
    ) -> None:
        self._api = api
        self._fetcher = fetcher
        self.links = MediaLinks(media, public_url or None, languages=languages)
        self._limits = dict(limits)
        self._voice_formats = voice_formats

    async def prepare(self, part: Part, request: SendRequest) -> dict[str, Any]:
        """`part` in its wire form; `request` is the message it belongs to (a note's language)."""
        if part.kind == "text" or part.media is None:
            return {"msgtype": "text", "text": part.text}
        seg = part.media
        kinds = self._candidates(part.kind, seg)
        largest = max((self._limits[k] for k in kinds), default=0)
        loaded = await self._load(seg, largest)
        for kind in kinds:
            if loaded.data is not None and len(loaded.data) <= self._limits[kind]:
                media_id = await self._api.upload(kind, loaded.data, _filename(seg, kind), _mime(seg, kind))
                out: dict[str, Any] = {"msgtype": kind, "media_id": media_id}
                if kind == "video":
                    title = part.title or texts(await self.links.language(request))(UNTITLED_VIDEO)
                    out.update(title=title, description=part.description)
                return out
        reason = TOO_LARGE if kinds else CANNOT_SEND
        return {"msgtype": "text", "text": await self._with_link(part, seg, request, reason, loaded.size)}

    def _candidates(self, kind: str, seg: Media) -> list[str]:
        if kind == "voice":
            kinds = ["voice", "file"] if self._voice_ok(seg) else ["file"]
        else:
            kinds = [kind]
        return [k for k in kinds if k in self._limits]

    def _voice_ok(self, seg: Media) -> bool:
        if seg.duration is not None and seg.duration > VOICE_MAX_S:
            return False
        return _format(seg) in self._voice_formats

    async def _load(self, seg: Media, max_bytes: int) -> _Loaded:
        if seg.data is not None:
            return _Loaded(seg.data if len(seg.data) <= max_bytes else None, len(seg.data))
        if seg.path:
            try:
                size = (await asyncio.to_thread(os.stat, seg.path)).st_size
            except OSError as exc:
                raise SendError(f"media file is gone: {seg.path} ({exc.strerror})", retryable=False) from None
            if size > max_bytes:
                return _Loaded(None, size)
            return _Loaded(await asyncio.to_thread(Path(seg.path).read_bytes), size)
        if seg.url:
            return await self._download(seg.url, max_bytes)
        raise SendError("media without a file, bytes or URL cannot be sent", retryable=False)

    async def _download(self, url: str, max_bytes: int) -> _Loaded:
        # The one guarded download: a URL leading to a private address is refused, for good.
        try:
            async with self._fetcher.open(url, max_bytes=max_bytes, timeout_s=DOWNLOAD_TIMEOUT_S) as download:
                data = await download.read()
                return _Loaded(data, len(data))
        except FetchTooLarge as exc:
            return _Loaded(None, exc.size)
        except FetchError as exc:
            raise SendError(f"media download: {exc}", retryable=exc.retryable) from None

    async def expired_text(self, part: Part, request: SendRequest) -> str:
        """What replaces an uploaded media kept longer than the platform keeps temporary media."""
        assert part.media is not None
        return await self._with_link(part, part.media, request, EXPIRED)

    async def _with_link(
        self, part: Part, seg: Media, request: SendRequest, reason: str, size: int | None = None
    ) -> str:
        note = await self.links.note(request, seg.kind, await self.links.link(seg), reason=reason, size=size)
        return f"{part.description}\n{note}" if part.kind == "video" and part.description else note


def _format(seg: Media) -> str:
    """A short format name (mp3, amr, ...) from the mime type or the file name."""
    name = seg.name or seg.path or seg.url or ""
    ext = os.path.splitext(name.split("?", 1)[0])[1].lstrip(".").lower()
    if ext:
        return ext
    mime = (seg.mime or "").lower()
    return {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/amr": "amr"}.get(mime, mime.rsplit("/", 1)[-1])


def _mime(seg: Media, kind: str) -> str:
    if seg.mime:
        return seg.mime
    guessed = mimetypes.guess_type(seg.name or seg.path or "")[0]
    return guessed or DEFAULT_MIME[kind]


def _filename(seg: Media, kind: str) -> str:
    """An ASCII file name with an extension: the platforms check the type by it."""
    source = seg.name or (Path(seg.path).name if seg.path else "") or ""
    ext = os.path.splitext(source)[1].lower()
    if not ext or not ext[1:].isalnum():
        ext = mimetypes.guess_extension(seg.mime or "") or DEFAULT_EXT[kind]
    stem = "".join(c for c in os.path.splitext(source)[0] if c.isascii() and (c.isalnum() or c in "-_"))[:40]
    return f"{stem or kind}{ext}"
