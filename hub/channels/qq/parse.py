"""QQ webhook payloads into hub Events: the envelope, C2C and group @-messages, attachments.

Everything here is pure and defensive: a payload of the wrong shape is a BadPayload (400),
never an exception of another kind, whatever its nesting, types or sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub import jsoncodec
from hub.errors import BadPayload
from hub.events import Audio, ChatRef, Event, File, Image, Message, Segment, Text, User, Video

C2C = "C2C_MESSAGE_CREATE"
GROUP_AT = "GROUP_AT_MESSAGE_CREATE"
MESSAGE_TYPES = frozenset({C2C, GROUP_AT})
OP_DISPATCH = 0
OP_ACK = 12
OP_VALIDATION = 13
ID_MAX = 255
CONTENT_MAX = 64 * 1024
ATTACHMENTS_MAX = 20


@dataclass(frozen=True, slots=True)
class Envelope:
    """`{id, op, d, s, t}`: what QQ posts to the webhook."""

    id: str | None
    op: int
    t: str | None
    d: Any


def _str(value: Any, what: str, *, max_len: int = ID_MAX, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > max_len:
        raise BadPayload(f"{what}: expected a string of at most {max_len} characters")
    return value


def envelope(body: bytes) -> Envelope:
    """Decode the body's JSON envelope (already verified: this is QQ speaking)."""
    try:
        data = jsoncodec.loads(body)
    except (ValueError, RecursionError):
        raise BadPayload("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadPayload("the body is not a JSON object")
    op = data.get("op")
    if not isinstance(op, int) or isinstance(op, bool):
        raise BadPayload("op: expected an integer")
    t = data.get("t")
    if t is not None and not isinstance(t, str):
        raise BadPayload("t: expected a string")
    raw_id = data.get("id")
    env_id = _str(raw_id, "id") if raw_id is not None else None
    return Envelope(env_id, op, t, data.get("d"))


def validation(env: Envelope) -> tuple[str, str]:
    """`(plain_token, event_ts)` of an op 13 URL check."""
    d = env.d
    if not isinstance(d, dict):
        raise BadPayload("d: expected an object")
    return _str(d.get("plain_token"), "d.plain_token"), _str(d.get("event_ts"), "d.event_ts", max_len=32)


def _when(value: Any, now: datetime) -> datetime:
    """When the user sent it (QQ's ISO timestamp), never later than now; now when unreadable."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return now
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return min(at.astimezone(UTC), now)
    return now


def _attachment(item: Any) -> Segment | None:
    if not isinstance(item, dict):
        return None
    url = item.get("url")
    if not isinstance(url, str) or not url or len(url) > 4096:
        return None
    if "://" not in url:
        url = "https://" + url.lstrip("/")  # QQ sometimes leaves out the scheme
    ctype = item.get("content_type")
    mime = ctype if isinstance(ctype, str) and len(ctype) <= 127 else None
    name = item.get("filename")
    name = name if isinstance(name, str) and len(name) <= 255 else None
    size = item.get("size")
    size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
    major = (mime or "").split("/", 1)[0]
    if major == "image":
        return Image(url=url, name=name, mime=mime, size=size)
    if major == "video":
        return Video(url=url, name=name, mime=mime, size=size)
    if major in ("voice", "audio"):
        return Audio(url=url, name=name, mime=mime if major == "audio" else None, size=size, voice=major == "voice")
    return File(url=url, name=name, mime=mime, size=size)


def message_event(env: Envelope, channel: str, *, now: datetime | None = None) -> Event:
    """A C2C or group @-message as an Event; its context carries what a reply needs."""
    now = now or datetime.now(UTC)
    d = env.d
    if not isinstance(d, dict):
        raise BadPayload("d: expected an object")
    msg_id = _str(d.get("id"), "d.id")
    author = d.get("author")
    if not isinstance(author, dict):
        raise BadPayload("d.author: expected an object")
    if env.t == GROUP_AT:
        group = _str(d.get("group_openid"), "d.group_openid")
        user_id = _str(author.get("member_openid") or author.get("id"), "d.author.member_openid")
        chat = ChatRef(channel, "group", group)
    else:
        user_id = _str(author.get("user_openid") or author.get("id"), "d.author.user_openid")
        chat = ChatRef(channel, "private", user_id)
    content = _str(d.get("content"), "d.content", max_len=CONTENT_MAX, required=False)
    segments: list[Segment] = []
    if content.strip():
        segments.append(Text(content.strip()))
    attachments = d.get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            raise BadPayload("d.attachments: expected a list")
        for item in attachments[:ATTACHMENTS_MAX]:
            seg = _attachment(item)
            if seg is not None:
                segments.append(seg)
    sent_at = _when(d.get("timestamp"), now)
    context: Mapping[str, Any] = {"msg_id": msg_id, "msg_at": sent_at.timestamp(), "reply_only": True}
    return Event(
        id=env.id or msg_id,
        channel=channel,
        chat=chat,
        sender=User(channel, user_id),
        message=Message(tuple(segments)),
        mentions_bot=env.t == GROUP_AT,
        received_at=now,
        context=context,
    )
