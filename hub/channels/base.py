"""The Channel interface: what every platform adapter provides, and its limits as data.

The inbound path is the same for every channel: verify → parse → `await ingress.submit(event)`
(stored in the inbox; False for a duplicate) → ack. The ack never waits for a skill: the
ingress hands new events to the dispatcher, which handles them in tracked tasks.
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import contextlib
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from hub.events import ChatRef, Event, Message


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """What a platform can take. `text_unit` says how `text_max` counts: `chars`, UTF-8
    `bytes` or `utf16` code units."""

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


OnProgress = Callable[[int], Awaitable[None]]
"""Awaited with the number of parts sent so far, after each part of a multi-part send."""


@dataclass(frozen=True, slots=True)
class SendRequest:
    """One message to send: what `Channel.send` gets, from the outbox or a test.

    `context` is what the inbound event carried for replies (a platform message id, a reply
    token); `progress` is how many parts an earlier attempt already sent, to be skipped, and
    `on_progress` is awaited with the new count after each part (after the last one too unless
    `progress_after_last` is off: the outbox marks the message sent at once, which says more).
    """

    target: ChatRef
    message: Message
    quote: str | None = None
    context: Mapping[str, object] = field(default_factory=dict)
    progress: int = 0
    on_progress: OnProgress | None = None
    progress_after_last: bool = True

    async def sent(self, parts: int) -> None:
        """Record that `parts` parts are out (no-op without a recorder)."""
        if self.on_progress is not None:
            await self.on_progress(parts)


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


class EditPace:
    """When a LiveStream may show its next text: at most once per `interval_s` (the first time
    `first_after_s` after it opens), and only a text that changes what shows."""

    def __init__(self, interval_s: float, first_after_s: float = 0.0) -> None:
        self.interval = interval_s
        self.shown = ""
        self._next_at = time.monotonic() + first_after_s

    def take(self, text: str, clip: Callable[[str], str]) -> str | None:
        """`text`, clipped to what the platform shows, when it is to show now; None when it is
        too soon (the latest text shows with the next edit, or at finish), blank or unchanged."""
        if time.monotonic() < self._next_at:
            return None
        shown = clip(text)
        return shown if shown.strip() and shown != self.shown else None

    def showed(self, text: str) -> None:
        self.shown = text
        self._next_at = time.monotonic() + self.interval

    def hold(self, seconds: float) -> None:
        """No edit for `seconds` (the platform asked to slow down, or refused one)."""
        self._next_at = time.monotonic() + seconds

    async def wait(self) -> None:
        """Until the next edit may go: the final one keeps to the pace too."""
        await asyncio.sleep(max(0.0, self._next_at - time.monotonic()))


class LiveSink(Protocol):
    """A reply channel held open by the request that asked (the web chat's SSE answer)."""

    @property
    def open(self) -> bool: ...

    async def text(self, delta: str) -> None: ...

    async def message(self, message: Message) -> None: ...


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
        """Stop taking input (polling, long connections, open streams): the first step of shutdown."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close client sessions: called after the outbox has stopped, so its last sends still work."""

    @property
    def bot_names(self) -> Sequence[str]:
        """Names a command may carry as `/cmd@name` in a group (learned at start)."""
        return ()

    @abc.abstractmethod
    async def send(self, request: SendRequest) -> SendResult:
        """Send a whole message, splitting and uploading as the platform needs.

        A message that needs several platform calls skips the first `request.progress` parts
        (already sent by an earlier attempt) and awaits `request.sent(n)` after each part
        (`parts.send_parts` does both). Raises SendError with `retryable` and `retry_after` set
        from the platform's answer.
        """

    async def open_stream(
        self, target: ChatRef, *, quote: str | None = None, context: Mapping[str, object] | None = None
    ) -> LiveStream | None:
        """A live reply that grows by edits, where the platform can edit; else None."""
        return None

    async def action(self, target: ChatRef, kind: str = "typing") -> None:  # noqa: B027
        """Show "typing…" / "uploading video…" where the platform has it."""

    def status(self) -> str:
        """One word for `/admin status` and /healthz: running, connecting, failing."""
        return "running"

    async def is_group_admin(self, event: Event) -> bool:
        """Whether the sender of a group event is one of that group's own admins, where the
        platform tells (False where it does not, or cannot be asked just now)."""
        return False


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel a channel's background tasks (polling, a long connection, retries) and wait until
    each has ended, whatever it raised; the list is empty after."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    tasks.clear()


# --- text splitting, shared by every channel ------------------------------------------------

# Boundaries to split at, best first: paragraph, line, sentence (CJK and Latin), clause, word.
_BREAKS = ("\n\n", "\n", "。", "！", "？", ". ", "! ", "? ", "；", "; ", "，", ", ", " ")
_FENCE = "```"
_CLOSE = "\n```"
# Below this limit a code block is cut like text: closing and reopening it would not fit.
_MIN_FENCE_LIMIT = 64
_MAX_OPENER = 32


def _measure(text: str, unit: str) -> int:
    """Length in the platform's unit: characters, UTF-8 bytes or UTF-16 code units."""
    if unit == "bytes":
        return len(text.encode("utf-8"))
    if unit == "utf16":
        return len(text.encode("utf-16-le")) // 2
    return len(text)


def _cut_to(text: str, limit: int, unit: str) -> int:
    """The largest prefix length (in characters) of `text` that fits `limit` units."""
    if unit == "chars" or _measure(text[:limit], unit) <= limit:
        return min(len(text), limit)
    size = 0
    for i, ch in enumerate(text[:limit]):  # every character is at least one unit
        size += len(ch.encode("utf-8")) if unit == "bytes" else (2 if ord(ch) > 0xFFFF else 1)
        if size > limit:
            return i
    return min(len(text), limit)


def _joins(prev: str, ch: str) -> bool:
    """Whether a cut between `prev` and `ch` would split what shows as one character."""
    o = ord(ch)
    return (
        ch == "\u200d"  # zero-width joiner (family and profession emoji)
        or prev == "\u200d"
        or (prev == "\r" and ch == "\n")
        or unicodedata.category(ch) in ("Mn", "Mc", "Me")  # combining marks, vowel signs
        or 0xFE00 <= o <= 0xFE0F  # variation selectors
        or 0x1F3FB <= o <= 0x1F3FF  # skin tones
        or 0xE0020 <= o <= 0xE007F  # tag characters (subdivision flags)
        or 0xE0100 <= o <= 0xE01EF
    )


def _is_regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _safe_cut(text: str, i: int) -> int:
    """Move a cut back so it falls between two visible characters (never to 0)."""
    j = i
    while 0 < j < len(text) and _joins(text[j - 1], text[j]):
        j -= 1
    if 0 < j < len(text) and _is_regional(text[j]) and _is_regional(text[j - 1]):
        k = j
        while k > 0 and _is_regional(text[k - 1]):
            k -= 1
        if (j - k) % 2:  # flags are pairs of regional indicators
            j -= 1
    return j if j > 0 else i


class _Fences:
    """Where the ``` fences of a text are, to tell whether a position is inside a code block."""

    def __init__(self, text: str, enabled: bool) -> None:
        self.starts: list[int] = []
        if enabled:
            i = text.find(_FENCE)
            while i != -1:
                self.starts.append(i)
                i = text.find(_FENCE, i + len(_FENCE))

    def inside(self, pos: int) -> bool:
        """Whether a cut before `pos` falls inside a code block."""
        return bisect.bisect_left(self.starts, pos) % 2 == 1

    def outside(self, pos: int) -> bool:
        return not self.inside(pos)

    def run_start(self, pos: int) -> int:
        """`pos`, moved back to the start of a fence it would cut through."""
        for s in self.starts:
            if s < pos < s + len(_FENCE):
                return s
        return pos

    def opener(self, head: str, max_len: int) -> str:
        """The opening fence line (with its language) of the block open at the end of `head`."""
        start = self.starts[bisect.bisect_left(self.starts, len(head)) - 1]
        line = head[start:].split("\n", 1)[0].rstrip()
        return line if len(line) <= max_len else _FENCE

    def block_end(self, pos: int) -> int | None:
        """Where the block open at `pos` closes (after its closing fence), if it does."""
        i = bisect.bisect_left(self.starts, pos)
        return self.starts[i] + len(_FENCE) if i < len(self.starts) else None

    def block_start(self, pos: int) -> int:
        return self.starts[bisect.bisect_left(self.starts, pos) - 1]


def _best_break(window: str, lo: int, ok: Callable[[int], bool], seps: Sequence[str] = _BREAKS) -> int:
    """The cut after the best separator (by rank, then the latest) beyond `lo`; 0 if none."""
    for sep in seps:
        pos = window.rfind(sep)
        while pos != -1 and pos + len(sep) > lo:
            cut = pos + len(sep)
            if ok(cut):
                return cut
            pos = window.rfind(sep, 0, pos)
    return 0


def split_text(text: str, limit: int, unit: str = "chars") -> list[str]:
    """Split text into parts of at most `limit` units (`chars`, `bytes` of UTF-8, or `utf16`
    code units), on paragraph, line, sentence or word boundaries.

    Never cuts inside a character (nor between an emoji and its modifiers, nor a combining
    mark from its base). A ``` code block that fits in one part is moved whole to the next
    part; one that does not is cut at a line, closed at the end of the part and reopened, with
    its language, at the start of the next.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    fences_on = limit >= _MIN_FENCE_LIMIT
    max_opener = min(_MAX_OPENER, limit // 8)
    parts: list[str] = []
    rest = text
    while _measure(rest, unit) > limit:
        fences = _Fences(rest, fences_on)
        cut, in_code = _choose_cut(rest, limit, unit, fences)
        if cut < 1:  # a limit smaller than one character: still move on
            cut, in_code = 1, False
        head, rest = rest[:cut], rest[cut:]
        if in_code:
            opener = fences.opener(head, max_opener)
            head += _FENCE if head.endswith("\n") else _CLOSE
            rest = opener + "\n" + rest
        else:
            head = head.rstrip()
            rest = rest.lstrip("\r\n")
        if head.strip():
            parts.append(head)
    if not parts:
        return [rest]
    if rest.strip():
        parts.append(rest.rstrip())
    return parts


def _choose_cut(rest: str, limit: int, unit: str, fences: _Fences) -> tuple[int, bool]:
    """Where to end the next part, and whether that is inside a code block."""
    room = fences.run_start(_cut_to(rest, limit, unit))
    cut = _best_break(rest[:room], room // 4, fences.outside)
    if cut:
        return cut, False
    if not fences.inside(room):
        return _safe_cut(rest, room), False
    start = fences.block_start(room)
    end = fences.block_end(room)
    if start > 0 and end is not None and _measure(rest[start:end], unit) <= limit:
        # The code block fits in a part of its own: end this part before it.
        return _best_break(rest[: start + 1], 0, fences.outside) or start, False
    # Cut inside the block, leaving room to close it.
    code_room = fences.run_start(_cut_to(rest, limit - _measure(_CLOSE, unit), unit))
    first_line_end = rest.find("\n", start)
    if first_line_end == -1 or first_line_end + 1 >= code_room:
        # Not even the block's first line fits: cut before the block, or as plain text.
        if start > 0:
            return start, False
        return _safe_cut(rest, code_room), False
    lo = max(code_room // 4, first_line_end + 1)
    cut = _best_break(rest[:code_room], lo, fences.inside, ("\n", *_BREAKS[2:]))
    if cut:
        return cut, True
    cut = _safe_cut(rest, code_room)
    return cut, fences.inside(cut) and cut > first_line_end
