"""Hub Messages to OneBot v11 message arrays, one array per platform call.

Text goes with images in one message (QQ shows them together); a record (voice) or a video
is a message of its own, as QQ requires, its caption the next message. Media go as `file`:
an http(s) URL the implementation downloads (a remote URL, or the hub's own `/media/<id>`
when `public_url` is set), else a `base64://` payload for files up to `base64_max`.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

from hub.channels.base import SendRequest, split_text
from hub.channels.parts import MediaLinks
from hub.errors import SendError
from hub.events import Audio, File, Image, Media, Mention, Message, Text, Video
from hub.i18n.language import ChatLanguages
from hub.storage.media import MediaStore

OneBotMessage = list[dict[str, Any]]
MB = 1024 * 1024


def segment_type(seg: Media) -> str:
    return "record" if seg.kind == "audio" else seg.kind


class Renderer:
    """Builds the arrays; needs the media store to turn local files into links or payloads."""

    def __init__(
        self,
        media: MediaStore,
        public_url: str | None,
        *,
        text_max: int,
        base64_max: int = 8 * MB,
        languages: ChatLanguages | None = None,
    ) -> None:
        self._links = MediaLinks(media, public_url or None, languages=languages)
        self._text_max = text_max
        self._base64_max = base64_max

    async def render(self, message: Message, quote_id: str | None, request: SendRequest) -> list[OneBotMessage]:
        """`request` is what `message` came in (a note's language)."""
        segments = message.segments
        if len(segments) == 1 and isinstance(segments[0], Text) and len(segments[0].text) <= self._text_max:
            # Most replies: one short text, one array, nothing to split.
            part: OneBotMessage = [{"type": "text", "data": {"text": segments[0].text}}]
            if quote_id:
                part.insert(0, {"type": "reply", "data": {"id": quote_id}})
            return [part]
        parts: list[OneBotMessage] = []
        current: OneBotMessage = []

        def flush() -> None:
            nonlocal current
            if current:
                parts.extend(_split(current, self._text_max))
            current = []

        for seg in segments:
            if isinstance(seg, Text):
                current.append({"type": "text", "data": {"text": seg.text}})
            elif isinstance(seg, Mention):
                current.append({"type": "at", "data": {"qq": seg.user_id}})
            elif isinstance(seg, Image | Audio | Video | File):
                item = await self._media_segment(seg, request)
                if item["type"] == "image":
                    current.append(item)
                else:
                    flush()
                    parts.append([item])
                if seg.caption:
                    current.append({"type": "text", "data": {"text": seg.caption}})
        flush()
        parts = [p for p in parts if p]
        if parts and quote_id:
            parts[0].insert(0, {"type": "reply", "data": {"id": quote_id}})
        return parts

    async def _media_segment(self, seg: Media, request: SendRequest) -> dict[str, Any]:
        kind = segment_type(seg)
        file = await self._file_value(seg)
        if file is None:
            note = await self._links.note(request, seg.kind, None)
            return {"type": "text", "data": {"text": note}}
        data: dict[str, Any] = {"file": file}
        if kind == "file":
            data["name"] = seg.name or (Path(seg.path).name if seg.path else "file")
        return {"type": kind, "data": data}

    async def _file_value(self, seg: Media) -> str | None:
        """What goes in `file`: a URL, `base64://...`, or None when neither is possible."""
        if seg.data is None and seg.path is None:
            if seg.url and seg.url.startswith(("http://", "https://")):
                return seg.url
            raise SendError("media without a file, bytes or URL cannot be sent", retryable=False)
        if seg.path is not None:
            if self._links.base is not None and self._links.store.id_of_path(seg.path) is not None:
                return await self._links.link(seg)  # in the media store already: linked, not copied
            try:
                size = (await asyncio.to_thread(os.stat, seg.path)).st_size
            except OSError as exc:
                raise SendError(f"media file is gone: {seg.path} ({exc.strerror})", retryable=False) from None
            if size <= self._base64_max:
                return _b64(await asyncio.to_thread(Path(seg.path).read_bytes))
        elif seg.data is not None and len(seg.data) <= self._base64_max:
            return _b64(seg.data)
        # Too large to send inline: a link, streamed into the store (None without a public address).
        return await self._links.link(seg)


def _b64(data: bytes) -> str:
    return "base64://" + base64.b64encode(data).decode()


def _split(message: OneBotMessage, text_max: int) -> list[OneBotMessage]:
    """One array, or several when its text is longer than a message takes (split on words)."""
    out: list[OneBotMessage] = []
    current: OneBotMessage = []
    size = 0
    for seg in message:
        if seg["type"] != "text":
            current.append(seg)
            continue
        for chunk in split_text(seg["data"]["text"], text_max):
            if size and size + len(chunk) > text_max:
                out.append(current)
                current, size = [], 0
            current.append({"type": "text", "data": {"text": chunk}})
            size += len(chunk)
    if current:
        out.append(current)
    return out


def describe(message: OneBotMessage) -> str:
    """The segment types of a message, for logs: never its text."""
    return ",".join(str(s["type"]) for s in message)[:80]
