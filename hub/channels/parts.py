"""What every channel's outbound side shares, written once: the media-as-link rule, chunked file
reading, the multi-part send loop that records progress, and a message cut into parts of one
text or one media each.

A channel declares its limits (`ChannelLimits`) and its per-part send; `send_parts` runs the
parts in order, skipping those an earlier attempt sent, and records each one that goes out so a
retry resumes after it. Media a platform cannot take goes as a link: `MediaLinks.link` gives
the segment's own URL, or `<public_url>/media/<id>` once it is in the media store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from hub.channels.base import SendRequest, split_text
from hub.events import Audio, File, Image, Media, Mention, Message, Text, Video
from hub.i18n import N_, Lang, texts
from hub.i18n.language import HINT_KEY, ChatLanguages, platform_languages

CHUNK = 1024 * 1024
TITLE_MAX = 64
# Copying a local file into the store for a link has no size cap: it is already on this disk.
_NO_CAP = 2**62

P = TypeVar("P")
MB = 1024 * 1024

# Why a media goes as a text instead, by its kind (image, video, audio, file): whole sentences.
CANNOT_SEND, TOO_LARGE, EXPIRED, NOT_SHOWN = "cannot_send", "too_large", "expired", "not_shown"
MEDIA_NOTES = {
    (CANNOT_SEND, "image"): N_("This image cannot be sent here."),
    (CANNOT_SEND, "video"): N_("This video cannot be sent here."),
    (CANNOT_SEND, "audio"): N_("This audio cannot be sent here."),
    (CANNOT_SEND, "file"): N_("This file cannot be sent here."),
    (TOO_LARGE, "image"): N_("This image is too large to send here."),
    (TOO_LARGE, "video"): N_("This video is too large to send here."),
    (TOO_LARGE, "audio"): N_("This audio is too large to send here."),
    (TOO_LARGE, "file"): N_("This file is too large to send here."),
    (EXPIRED, "image"): N_("This image waited too long to be shown here."),
    (EXPIRED, "video"): N_("This video waited too long to be shown here."),
    (EXPIRED, "audio"): N_("This audio waited too long to be shown here."),
    (EXPIRED, "file"): N_("This file waited too long to be shown here."),
    (NOT_SHOWN, "image"): N_("This image could not be shown here."),
    (NOT_SHOWN, "video"): N_("This video could not be shown here."),
    (NOT_SHOWN, "audio"): N_("This audio could not be shown here."),
    (NOT_SHOWN, "file"): N_("This file could not be shown here."),
}
# TOO_LARGE with the size known.
SIZED_NOTES = {
    "image": N_("This image (%(size)s MB) is too large to send here."),
    "video": N_("This video (%(size)s MB) is too large to send here."),
    "audio": N_("This audio (%(size)s MB) is too large to send here."),
    "file": N_("This file (%(size)s MB) is too large to send here."),
}
UNTITLED_VIDEO = N_("Video")
OPEN_LINK = N_("Open it here:\n%(link)s")
NO_LINK = N_("There is no link to it either: ask whoever runs this hub to set [http] public_url.")
_PART_KINDS = {"image": "image", "audio": "voice", "video": "video", "file": "file"}


@dataclass(frozen=True, slots=True)
class Part:
    """One platform message: text, or one media (a video with its title and description)."""

    kind: str  # text | image | voice | video | file
    text: str = ""
    media: Media | None = None
    title: str = ""
    description: str = ""


def plain_mention(seg: Mention) -> str:
    return f"@{seg.name or seg.user_id} "


def render(
    message: Message,
    text_bytes: int,
    *,
    mention: Callable[[Mention], str] = plain_mention,
    titled_video: bool = True,
) -> list[Part]:
    """The parts of a message for a platform that sends one media per message, in order: text
    split at `text_bytes` UTF-8 bytes (a mention written by `mention`), one part per media.

    A media caption follows its media as text, except a video's with `titled_video`, which is
    its title and description. Quotes and unsupported content have no form here.
    """
    parts: list[Part] = []
    buf: list[str] = []

    def flush() -> None:
        text = "".join(buf).strip()
        buf.clear()
        if text:
            parts.extend(Part("text", chunk) for chunk in split_text(text, text_bytes, "bytes"))

    for seg in message.segments:
        if isinstance(seg, Text):
            buf.append(seg.text)
        elif isinstance(seg, Mention):
            buf.append(mention(seg))
        elif isinstance(seg, Video) and titled_video:
            flush()
            caption = (seg.caption or "").strip()
            # Untitled: the channel names it in the chat's language (UNTITLED_VIDEO).
            title = caption.splitlines()[0] if caption else (seg.name or "")
            if len(title) > TITLE_MAX:
                title = title[: TITLE_MAX - 1] + "…"
            parts.append(Part("video", media=seg, title=title, description=caption))
        elif isinstance(seg, Image | Audio | Video | File):
            flush()
            parts.append(Part(_PART_KINDS[seg.kind], media=seg))
            if seg.caption:
                buf.append(seg.caption)
    flush()
    return parts


async def read_chunks(path: str | Path, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, read off the event loop, without holding it all in memory."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while data := await asyncio.to_thread(fh.read, chunk):
            yield data
    finally:
        fh.close()


async def send_parts(
    parts: Sequence[P], request: SendRequest, send_one: Callable[[int, P], Awaitable[str | None]]
) -> list[str]:
    """Send `parts` in order with `send_one(index, part)` (the platform's message id, if it
    gives one), skipping the first `request.progress` and recording progress after each."""
    ids: list[str] = []
    last = len(parts) - 1
    for n, part in enumerate(parts):
        if n < request.progress:
            continue
        sent_id = await send_one(n, part)
        if sent_id:
            ids.append(sent_id)
        if n < last or request.progress_after_last:
            await request.sent(n + 1)
    return ids


class Stored(Protocol):
    @property
    def id(self) -> str: ...


class MediaStore(Protocol):
    """What the links need of the media store (hub/storage/media.py)."""

    def id_of_path(self, path: str) -> str | None: ...

    async def save_bytes(
        self, data: bytes, *, name: str | None = None, mime: str | None = None, kind: str | None = None
    ) -> Stored: ...

    async def save_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        name: str | None = None,
        mime: str | None = None,
        kind: str | None = None,
    ) -> Stored: ...


class MediaLinks:
    """Links to media for platforms that cannot take it as an upload (too large, wrong kind).

    `public_url` is the hub's public address (`[http] public_url`); "" gives links relative to
    the hub itself (the web chat), None gives no link to stored media at all.
    """

    def __init__(
        self,
        store: MediaStore,
        public_url: str | None,
        *,
        publish_files: bool = True,
        languages: ChatLanguages | None = None,
    ) -> None:
        self.store = store
        self.base = public_url.rstrip("/") if public_url is not None else None
        # Whether a local file outside the media store may be copied in to be linked.
        self._publish_files = publish_files
        self._languages = languages or platform_languages()

    async def language(self, request: SendRequest | None) -> Lang:
        """The language of the chat `request` goes to (English without one)."""
        if request is None:
            return "en"
        return await self._languages.of_chat(str(request.target), request.context.get(HINT_KEY))

    async def note(
        self,
        request: SendRequest | None,
        kind: str,
        link: str | None,
        *,
        reason: str = TOO_LARGE,
        size: int | None = None,
    ) -> str:
        """What replaces a media sent as a text, in the language of the chat `request` goes to:
        why, then its link (or that there is none). `kind` is the media's (image, video, audio,
        file)."""
        t = texts(await self.language(request))
        kind = kind if kind in SIZED_NOTES else "file"
        # Under 0.05 MB, a size says nothing: left out.
        mb = f"{size / MB:.1f}".removesuffix(".0") if size is not None else None
        if reason == TOO_LARGE and mb not in (None, "0"):
            why = t(SIZED_NOTES[kind], size=mb)
        else:
            why = t(MEDIA_NOTES[(reason, kind)])
        where = t(OPEN_LINK, link=link) if link else t(NO_LINK)
        return f"{why}\n{where}"

    async def media_id(self, seg: Media) -> str | None:
        """The store id of a local or in-memory segment, storing it (streamed) when it is not in
        the store yet; None for a URL segment or an unpublished file."""
        if seg.path:
            media_id = self.store.id_of_path(seg.path)
            if media_id is not None or not self._publish_files:
                return media_id
            stored = await self.store.save_stream(
                read_chunks(seg.path),
                max_bytes=_NO_CAP,
                name=seg.name or Path(seg.path).name,
                mime=seg.mime,
                kind=seg.kind,
            )
            return stored.id
        if seg.data is not None:
            return (await self.store.save_bytes(seg.data, name=seg.name, mime=seg.mime, kind=seg.kind)).id
        return None

    async def link(self, seg: Media) -> str | None:
        """Where the platform (or the user) can fetch the media: its own URL, or the hub's
        `/media/<id>`; None when there is none."""
        if seg.path is None and seg.data is None:
            return seg.url
        if self.base is None:
            return None
        media_id = await self.media_id(seg)
        return f"{self.base}/media/{media_id}" if media_id else None
