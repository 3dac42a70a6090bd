"""The Channel interface: what every platform adapter provides, and its limits as data.

The inbound path is the same for every channel: verify → parse → `await ingress.submit(event)`
(stored in the inbox; False for a duplicate) → ack. The ack never waits for a skill: the
ingress hands new events to the dispatcher, which handles them in tracked tasks.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from hub.events import ChatRef, Event, Message


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """What a platform can take. `text_unit` says how `text_max` counts: chars or UTF-8 bytes."""

    text_max: int = 4096
    text_unit: str = "chars"
    caption_max: int = 1024
    # Largest upload per media kind ("image", "video", "audio", "file"), in bytes.
    media_max: Mapping[str, int] = field(default_factory=dict)
    can_edit: bool = False
    can_quote: bool = False


@dataclass(frozen=True, slots=True)
class SendResult:
    """Platform ids of what went out (for later edits, quotes and replies-to-bot)."""

    message_ids: Sequence[str] = ()


class Ingress(Protocol):
    async def submit(self, event: Event) -> bool:
        """Store the event durably; True when new, False for a duplicate delivery."""
        ...


class LiveStream(Protocol):
    """A reply that grows in place (message edits); created by `Channel.open_stream`."""

    async def update(self, text: str) -> None:
        """Show the text so far (the channel decides how often it really edits)."""
        ...

    async def finish(self, text: str) -> SendResult:
        """Show the final text; raises SendError when the platform refused it."""
        ...


class Channel(abc.ABC):
    """One platform, end to end: routes in, parsing, rendering and sending out."""

    name: str
    limits: ChannelLimits = ChannelLimits()

    def routes(self) -> list[web.RouteDef]:
        """HTTP routes this channel serves on the one server (webhooks, pages)."""
        return []

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open client sessions and start background tasks (long polling, websockets)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop taking input and close what `start` opened."""

    @property
    def bot_names(self) -> Sequence[str]:
        """Names a command may carry as `/cmd@name` in a group (learned at start)."""
        return ()

    @abc.abstractmethod
    async def send(
        self,
        target: ChatRef,
        message: Message,
        *,
        quote: str | None = None,
        context: Mapping[str, Any] | None = None,
        progress: int = 0,
        on_progress: Any = None,
    ) -> SendResult:
        """Send a whole message, splitting and uploading as the platform needs.

        A message that needs several platform calls skips the first `progress` parts (already
        sent by an earlier attempt) and awaits `on_progress(n)` after each part. Raises
        SendError with `retryable` and `retry_after` set from the platform's answer.
        """

    async def open_stream(
        self, target: ChatRef, *, quote: str | None = None, context: Mapping[str, Any] | None = None
    ) -> LiveStream | None:
        """A live reply that grows by edits, where the platform can edit; else None."""
        return None

    async def action(self, target: ChatRef, kind: str = "typing") -> None:  # noqa: B027
        """Show "typing…" / "uploading video…" where the platform has it."""

    def status(self) -> str:
        """One word for `/admin status` and /healthz: running, connecting, failing."""
        return "running"


# --- text splitting, shared by every channel ------------------------------------------------


def _measure(text: str, unit: str) -> int:
    return len(text.encode("utf-8")) if unit == "bytes" else len(text)


def _cut_to(text: str, limit: int, unit: str) -> int:
    """The largest prefix length (in chars) of `text` that fits `limit` units."""
    if unit != "bytes":
        return min(len(text), limit)
    size = 0
    for i, ch in enumerate(text):
        size += len(ch.encode("utf-8"))
        if size > limit:
            return i
    return len(text)


_BREAKS = ("\n\n", "\n", "。", "！", "？", ". ", "! ", "? ", "；", "; ", "，", ", ", " ")


def split_text(text: str, limit: int, unit: str = "chars") -> list[str]:
    """Split text into parts of at most `limit` units, on paragraph or sentence boundaries.

    Never cuts inside a multi-byte character; avoids cutting inside a ``` code block when a
    boundary outside one exists, and closes/reopens the fence when it must cut inside.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    rest = text
    while _measure(rest, unit) > limit:
        room = _cut_to(rest, limit, unit)
        window = rest[:room]
        cut = 0
        for sep in _BREAKS:
            candidates = [
                i for i in _positions(window, sep) if i > room // 4 and _fences_closed(window[: i + len(sep)])
            ]
            if candidates:
                cut = candidates[-1] + len(sep)
                break
        if cut == 0:
            for sep in _BREAKS:
                pos = window.rfind(sep)
                if pos > room // 4:
                    cut = pos + len(sep)
                    break
        if cut == 0:
            cut = room
        head = rest[:cut]
        rest = rest[cut:]
        if not _fences_closed(head):
            # Inside a code block: close it here and reopen it in the next part.
            closing = "\n```"
            while _measure(head + closing, unit) > limit and len(head) > 1:
                rest = head[-1] + rest
                head = head[:-1]
            head += closing
            rest = "```\n" + rest
        parts.append(head.rstrip() if head.strip() else head)
    if rest.strip() or not parts:
        parts.append(rest)
    return [p for p in parts if p] or [""]


def _positions(text: str, sep: str) -> list[int]:
    out, start = [], 0
    while (i := text.find(sep, start)) != -1:
        out.append(i)
        start = i + 1
    return out


def _fences_closed(text: str) -> bool:
    return text.count("```") % 2 == 0
