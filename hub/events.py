"""The one internal event type every channel produces, and its message segments.

Stdlib only: channels, skills and storage all import this module.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

ChatKind = Literal["private", "group"]
MediaKind = Literal["image", "video", "audio", "file"]


@dataclass(frozen=True, slots=True)
class ChatRef:
    """Where a message lives: `"<channel>:<kind>:<chat_id>[#<thread_id>]"`."""

    channel: str
    kind: ChatKind
    chat_id: str
    thread_id: str | None = None

    def __str__(self) -> str:
        base = f"{self.channel}:{self.kind}:{self.chat_id}"
        return f"{base}#{self.thread_id}" if self.thread_id else base

    @classmethod
    def parse(cls, text: str) -> ChatRef:
        """Parse the string form; `chat_id` is everything after the second colon."""
        parts = text.split(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise ValueError(f"not a chat reference: {text!r} (expected <channel>:<kind>:<chat_id>)")
        channel, kind, rest = parts
        if kind not in ("private", "group"):
            raise ValueError(f"not a chat reference: {text!r} (kind must be private or group)")
        thread_id: str | None = None
        if "#" in rest:
            rest, thread_id = rest.rsplit("#", 1)
            thread_id = thread_id or None
        if not rest:
            raise ValueError(f"not a chat reference: {text!r} (empty chat id)")
        return cls(channel, kind, rest, thread_id)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class User:
    """A person on one platform; `key` is the cross-platform name `"<channel>:<id>"`."""

    channel: str
    id: str
    name: str = ""

    @property
    def key(self) -> str:
        return f"{self.channel}:{self.id}"


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Mention:
    user_id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Quote:
    """A reference to an earlier message (the one this one answers)."""

    message_id: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class _Media:
    url: str | None = None
    path: str | None = None
    data: bytes | None = field(default=None, repr=False)
    name: str | None = None
    mime: str | None = None
    size: int | None = None
    duration: float | None = None
    # Platform handle for download on demand (Telegram file_id, WeChat MediaId, ...).
    file_id: str | None = None
    caption: str | None = None


@dataclass(frozen=True, slots=True)
class Image(_Media):
    kind: MediaKind = "image"


@dataclass(frozen=True, slots=True)
class Video(_Media):
    kind: MediaKind = "video"


@dataclass(frozen=True, slots=True)
class Audio(_Media):
    kind: MediaKind = "audio"
    voice: bool = False


@dataclass(frozen=True, slots=True)
class File(_Media):
    kind: MediaKind = "file"


@dataclass(frozen=True, slots=True)
class Unsupported:
    """Platform content the hub does not understand: kept, never an exception."""

    kind: str
    summary: str = ""


Segment = Text | Mention | Quote | Image | Video | Audio | File | Unsupported
Media = Image | Video | Audio | File
MEDIA_TYPES: dict[str, type[Media]] = {"image": Image, "video": Video, "audio": Audio, "file": File}


@dataclass(frozen=True, slots=True)
class Message:
    segments: tuple[Segment, ...] = ()

    @classmethod
    def of(cls, *items: Segment | str) -> Message:
        return cls(tuple(Text(i) if isinstance(i, str) else i for i in items))

    @property
    def text(self) -> str:
        """Plain text of the message: its Text segments joined, stripped."""
        return "".join(s.text for s in self.segments if isinstance(s, Text)).strip()

    @property
    def media(self) -> tuple[Media, ...]:
        return tuple(s for s in self.segments if isinstance(s, Image | Video | Audio | File))

    def __bool__(self) -> bool:
        return bool(self.segments)


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    channel: str
    chat: ChatRef
    sender: User
    message: Message
    mentions_bot: bool = False
    reply_to: str | None = None
    reply_to_bot: bool = False
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # What the platform needs to reply later (QQ msg_id, WeChat passive, ...); JSON-able.
    context: Mapping[str, Any] = field(default_factory=dict)
    raw: Any = field(default=None, repr=False, compare=False)
    # The platform's signature did not cover the body (WeChat plain mode): whoever saw one
    # signed URL could have written it. Skills that change the hub refuse such messages.
    body_unauthenticated: bool = False

    @property
    def addressed(self) -> bool:
        """In a group, whether the bot was @mentioned or replied to."""
        return self.chat.kind == "private" or self.mentions_bot or self.reply_to_bot


# --- JSON form, for the inbox, the outbox and the jobs table -------------------------------


def segment_to_dict(seg: Segment) -> dict[str, Any]:
    match seg:
        case Text(text=t):
            return {"type": "text", "text": t}
        case Mention(user_id=u, name=n):
            return {"type": "mention", "user_id": u, "name": n}
        case Quote(message_id=m, text=t):
            return {"type": "quote", "message_id": m, "text": t}
        case Unsupported(kind=k, summary=s):
            return {"type": "unsupported", "kind": k, "summary": s}
        case Image() | Video() | Audio() | File():
            out: dict[str, Any] = {"type": seg.kind}
            for key in ("url", "path", "name", "mime", "size", "duration", "file_id", "caption"):
                value = getattr(seg, key)
                if value is not None:
                    out[key] = value
            if seg.data is not None:
                out["data_b64"] = base64.b64encode(seg.data).decode()
            if isinstance(seg, Audio) and seg.voice:
                out["voice"] = True
            return out
    raise TypeError(f"not a segment: {seg!r}")


def segment_from_dict(d: Mapping[str, Any]) -> Segment:
    kind = d.get("type")
    if kind == "text":
        return Text(str(d.get("text", "")))
    if kind == "mention":
        return Mention(str(d.get("user_id", "")), str(d.get("name", "")))
    if kind == "quote":
        return Quote(str(d.get("message_id", "")), str(d.get("text", "")))
    if kind in MEDIA_TYPES:
        data = d.get("data_b64")
        kwargs: dict[str, Any] = {
            k: d.get(k) for k in ("url", "path", "name", "mime", "size", "duration", "file_id", "caption")
        }
        kwargs["data"] = base64.b64decode(data) if data else None
        if kind == "audio":
            return Audio(**kwargs, voice=bool(d.get("voice")))
        return MEDIA_TYPES[kind](**kwargs)
    return Unsupported(str(d.get("kind", kind)), str(d.get("summary", "")))


def message_to_list(message: Message) -> list[dict[str, Any]]:
    return [segment_to_dict(s) for s in message.segments]


def message_from_list(items: Iterable[Mapping[str, Any]]) -> Message:
    return Message(tuple(segment_from_dict(i) for i in items))


def event_to_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "channel": event.channel,
        "chat": str(event.chat),
        "sender": {"id": event.sender.id, "name": event.sender.name},
        "message": message_to_list(event.message),
        "mentions_bot": event.mentions_bot,
        "reply_to": event.reply_to,
        "reply_to_bot": event.reply_to_bot,
        "received_at": event.received_at.isoformat(),
        "context": dict(event.context),
        "body_unauthenticated": event.body_unauthenticated,
    }


def event_from_dict(d: Mapping[str, Any]) -> Event:
    chat = ChatRef.parse(d["chat"])
    received = datetime.fromisoformat(d["received_at"])
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    return Event(
        id=str(d["id"]),
        channel=str(d["channel"]),
        chat=chat,
        sender=User(chat.channel, str(d["sender"]["id"]), str(d["sender"].get("name", ""))),
        message=message_from_list(d.get("message", [])),
        mentions_bot=bool(d.get("mentions_bot")),
        reply_to=d.get("reply_to"),
        reply_to_bot=bool(d.get("reply_to_bot")),
        received_at=received,
        context=dict(d.get("context") or {}),
        body_unauthenticated=bool(d.get("body_unauthenticated")),
    )
