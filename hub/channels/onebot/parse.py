"""OneBot v11 events to hub Events: message events kept, the rest recognised and ignored.

Every field is checked for its type: an implementation (or whoever holds its token) may send
anything. A message event that lacks what a reply needs is BadPayload; meta events,
notices, requests and the bot's own messages are not for the router (`Ignored`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hub.channels.onebot.cqcode import RawSegment, parse_message, text_of
from hub.errors import BadPayload
from hub.events import MEDIA_TYPES, Audio, ChatRef, Event, Mention, Message, Quote, Segment, Text, Unsupported, User

CHANNEL = "onebot"
ID_MAX = 20  # QQ numbers and group numbers are at most 20 digits
NAME_MAX = 64


@dataclass(frozen=True, slots=True)
class Ignored:
    """Not a message for the router: why, and a message id the bot sent (message_sent)."""

    reason: str
    self_id: str | None = None
    own_message_id: str | None = None


def number_id(value: Any, field: str, *, required: bool = True) -> str:
    """A QQ-style numeric id (int or digit string) as a string."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value >= 0:
        value = str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= ID_MAX:
        return value
    if required:
        raise BadPayload(f"{field}: expected a number")
    return ""


def message_id(value: Any) -> str:
    """A message id: an int (NapCat, Lagrange) or a short token string (some forks)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable() and "/" not in value:
        return value
    raise BadPayload("message_id: expected a number")


def parse_event(payload: dict[str, Any], is_bot_message: Callable[[str, str], bool]) -> Event | Ignored:
    """One OneBot event; `is_bot_message(self_id, message_id)` says whether the bot sent that."""
    post_type = payload.get("post_type")
    self_id = number_id(payload.get("self_id"), "self_id")
    if post_type == "message_sent":
        return Ignored("own message", self_id, _own_id(payload))
    if post_type != "message":
        return Ignored(f"post_type {str(post_type)[:32]}", self_id)
    kind = payload.get("message_type")
    if kind not in ("private", "group"):
        return Ignored(f"message_type {str(kind)[:32]}", self_id)
    mid = message_id(payload.get("message_id"))
    user_id = number_id(payload.get("user_id"), "user_id")
    if user_id == self_id:
        return Ignored("own message", self_id, mid)
    chat_id = number_id(payload.get("group_id"), "group_id") if kind == "group" else user_id
    raw = payload.get("message")
    if raw is None:
        raw = payload.get("raw_message", "")
    segments, mentioned, reply_to = to_segments(parse_message(raw), self_id)
    sender = payload.get("sender") if isinstance(payload.get("sender"), dict) else {}
    assert isinstance(sender, dict)
    name = text_of(sender, "card", NAME_MAX) or text_of(sender, "nickname", NAME_MAX)
    role = text_of(sender, "role", 16)
    context: dict[str, Any] = {"self_id": self_id}
    if role in ("owner", "admin"):
        context["group_role"] = role
    return Event(
        id=f"{self_id}/{mid}",
        channel=CHANNEL,
        chat=ChatRef(CHANNEL, kind, f"{self_id}/{chat_id}"),
        sender=User(CHANNEL, user_id, name),
        message=Message(tuple(segments)),
        mentions_bot=mentioned,
        reply_to=reply_to,
        reply_to_bot=reply_to is not None and is_bot_message(self_id, reply_to),
        context=context,
        raw=payload,
    )


def _own_id(payload: dict[str, Any]) -> str | None:
    try:
        return message_id(payload.get("message_id"))
    except BadPayload:
        return None


def to_segments(raw: list[RawSegment], self_id: str) -> tuple[list[Segment], bool, str | None]:
    """Hub segments, whether an `at` names the bot, and the id of the message replied to."""
    out: list[Segment] = []
    mentioned = False
    reply_to: str | None = None
    for kind, data in raw:
        if kind == "text":
            text = text_of(data, "text", 65536)
            if text:
                out.append(Text(text))
        elif kind == "at":
            qq = text_of(data, "qq", ID_MAX)
            mentioned = mentioned or qq == self_id
            out.append(Mention(qq, text_of(data, "name", NAME_MAX)))
        elif kind == "reply":
            rid = text_of(data, "id", 64)
            if rid and reply_to is None:
                reply_to = rid
                out.append(Quote(rid))
        elif kind in ("image", "record", "video", "file"):
            out.append(_media(kind, data))
        else:
            out.append(Unsupported(kind, _summary(kind, data)))
    return out, mentioned, reply_to


def _media(kind: str, data: dict[str, Any]) -> Segment:
    url = text_of(data, "url", 2048)
    file = text_of(data, "file", 2048)
    if not url and file.startswith(("http://", "https://")):
        url = file
    if not url.startswith(("http://", "https://")):
        url = ""
    size_text = text_of(data, "file_size", 20)
    size = int(size_text) if size_text.isdigit() else None
    name = text_of(data, "name", 255) or (file if file and not file.startswith(("http", "base64:")) else "") or None
    handle = file[:255] or None
    if kind == "record":
        return Audio(url=url or None, name=name, size=size, file_id=handle, voice=True)
    if kind == "file":
        handle = text_of(data, "file_id", 255) or handle
    return MEDIA_TYPES[kind](url=url or None, name=name, size=size, file_id=handle)


def _summary(kind: str, data: dict[str, Any]) -> str:
    if kind == "face":
        return f"[face {text_of(data, 'id', 16)}]"
    return f"[{kind}]"
