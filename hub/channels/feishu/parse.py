"""Feishu event v2 (`im.message.receive_v1`) into the hub's Event.

Pure functions over the decoded JSON: every field is checked for its type, and a shape this
version does not expect becomes BadPayload (a 400) or an Unsupported segment, never an
exception. Media segments carry a `file_id` of `<message_id>:<image|file>:<key>`, what
`im/v1/messages/{id}/resources/{key}?type=` needs to download them on demand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.errors import BadPayload
from hub.events import (
    Audio,
    ChatRef,
    Event,
    File,
    Image,
    Mention,
    Message,
    Segment,
    Text,
    Unsupported,
    User,
    Video,
)

CHANNEL = "feishu"
MESSAGE_EVENT = "im.message.receive_v1"
MAX_ID = 128
ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.]{1,128}")
MAX_CONTENT = 256 * 1024


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of an event v2 every event type has."""

    event_id: str
    event_type: str
    token: str | None
    body: Mapping[str, Any]


def _str(value: Any, what: str, *, required: bool = True) -> str:
    """An id as Feishu writes them (`ou_…`, `oc_…`, `om_…`, hex event ids): never anything else."""
    if value is None and not required:
        return ""
    if not isinstance(value, str) or ((required or value) and not ID.fullmatch(value)):
        raise BadPayload(f"{what} must be an id of 1 to {MAX_ID} letters, digits, _ and -")
    return value


def _event_type(value: Any) -> str:
    if not isinstance(value, str) or not EVENT_TYPE.fullmatch(value):
        raise BadPayload("header.event_type must be a name like im.message.receive_v1")
    return value


def _dict(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadPayload(f"{what} must be an object")
    return value


def envelope(data: Mapping[str, Any]) -> Envelope:
    """The event v2 header: `schema "2.0"`, `header.event_id`, `header.event_type`."""
    if data.get("schema") != "2.0":
        raise BadPayload("not a Feishu event v2 (schema must be 2.0)")
    header = _dict(data.get("header"), "header")
    token = header.get("token")
    return Envelope(
        event_id=_str(header.get("event_id"), "header.event_id"),
        event_type=_event_type(header.get("event_type")),
        token=token if isinstance(token, str) else None,
        body=_dict(data.get("event", {}), "event"),
    )


def parse_message(
    env: Envelope, bot_open_id: str | None, sent_by_bot: Callable[[str], bool] = lambda _: False
) -> Event:
    """An `im.message.receive_v1` event as the hub's Event; `sent_by_bot` tells replies to the bot."""
    msg = _dict(env.body.get("message"), "event.message")
    sender = _dict(env.body.get("sender", {}), "event.sender")
    sender_ids = _dict(sender.get("sender_id", {}), "event.sender.sender_id")
    open_id = _str(sender_ids.get("open_id"), "event.sender.sender_id.open_id")
    message_id = _str(msg.get("message_id"), "event.message.message_id")
    chat_type = msg.get("chat_type")
    thread_id = _str(msg.get("thread_id"), "event.message.thread_id", required=False) or None
    if chat_type == "p2p":
        chat = ChatRef(CHANNEL, "private", open_id, thread_id)
    elif chat_type == "group":
        chat = ChatRef(CHANNEL, "group", _str(msg.get("chat_id"), "event.message.chat_id"), thread_id)
    else:
        raise BadPayload("event.message.chat_type must be p2p or group")
    kind = _str(msg.get("message_type"), "event.message.message_type")
    content = msg.get("content", "{}")
    if not isinstance(content, str) or len(content) > MAX_CONTENT:
        raise BadPayload("event.message.content must be a JSON string")
    mentions = _mentions(msg.get("mentions"))
    segments, mentioned = _segments(kind, content, message_id, mentions, bot_open_id)
    parent = msg.get("parent_id")
    reply_to = parent if isinstance(parent, str) and ID.fullmatch(parent) else None
    context: dict[str, Any] = {"message_id": message_id, "chat_type": chat_type}
    if thread_id:
        context["thread_id"] = thread_id
    return Event(
        id=env.event_id,
        channel=CHANNEL,
        chat=chat,
        sender=User(CHANNEL, open_id),
        message=Message(tuple(segments)),
        mentions_bot=mentioned,
        reply_to=reply_to,
        reply_to_bot=reply_to is not None and sent_by_bot(reply_to),
        received_at=_created(msg.get("create_time")),
        context=context,
    )


def _created(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Mention:
    key: str
    open_id: str
    name: str


def _mentions(value: Any) -> dict[str, _Mention]:
    out: dict[str, _Mention] = {}
    if not isinstance(value, list):
        return out
    for m in value[:100]:
        if not isinstance(m, dict) or not isinstance(m.get("key"), str):
            continue
        ids = m.get("id")
        open_id = ids.get("open_id") if isinstance(ids, dict) else None
        name = m.get("name")
        out[m["key"]] = _Mention(
            m["key"],
            open_id if isinstance(open_id, str) and ID.fullmatch(open_id) else "",
            name[:MAX_ID] if isinstance(name, str) else "",
        )
    return out


def _segments(
    kind: str, content: str, message_id: str, mentions: Mapping[str, _Mention], bot: str | None
) -> tuple[list[Segment], bool]:
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return [Unsupported(kind, "content is not JSON")], False
    if not isinstance(body, dict):
        return [Unsupported(kind, "content is not an object")], False

    def res(tag: str, key: Any) -> str | None:
        return f"{message_id}:{tag}:{key}" if isinstance(key, str) and ID.fullmatch(key) else None

    name = body.get("file_name") if isinstance(body.get("file_name"), str) else None
    duration = body.get("duration")
    seconds = duration / 1000 if isinstance(duration, int | float) and not isinstance(duration, bool) else None
    if kind == "text":
        text = body.get("text")
        return _text_with_mentions(text if isinstance(text, str) else "", mentions, bot)
    if kind == "post":
        return _post(body, message_id, mentions, bot)
    if kind == "image" and (fid := res("image", body.get("image_key"))):
        return [Image(file_id=fid)], False
    if kind == "file" and (fid := res("file", body.get("file_key"))):
        return [File(file_id=fid, name=name)], False
    if kind == "audio" and (fid := res("file", body.get("file_key"))):
        return [Audio(file_id=fid, duration=seconds, mime="audio/opus", voice=True)], False
    if kind == "media" and (fid := res("file", body.get("file_key"))):
        return [Video(file_id=fid, name=name, duration=seconds, mime="video/mp4")], False
    return [Unsupported(kind, f"a Feishu {kind} message")], False


def _text_with_mentions(text: str, mentions: Mapping[str, _Mention], bot: str | None) -> tuple[list[Segment], bool]:
    """Text whose `@_user_N` keys become Mention segments; the bot's own is dropped."""
    out: list[Segment] = []
    mentioned = False
    rest = text
    while rest:
        at = rest.find("@_")
        if at == -1:
            break
        key = next((k for k in sorted(mentions, key=len, reverse=True) if rest.startswith(k, at)), None)
        if key is None:
            out.append(Text(rest[: at + 2]))
            rest = rest[at + 2 :]
            continue
        if at:
            out.append(Text(rest[:at]))
        m = mentions[key]
        rest = rest[at + len(key) :]
        if bot and m.open_id == bot:
            mentioned = True
            rest = rest.lstrip(" ,，:：")
        else:
            out.append(Mention(m.open_id, m.name))
    if rest:
        out.append(Text(rest))
    return _merge(out), mentioned


def _merge(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for s in segments:
        if isinstance(s, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + s.text)
        else:
            out.append(s)
    if out and isinstance(out[0], Text):
        out[0] = Text(out[0].text.lstrip())
    return [s for s in out if not (isinstance(s, Text) and not s.text)]


def _post(
    body: Mapping[str, Any], message_id: str, mentions: Mapping[str, _Mention], bot: str | None
) -> tuple[list[Segment], bool]:
    """Rich text flattened: paragraphs as lines, links as their text, images as Image segments."""
    if "content" not in body:  # the localised form: {"zh_cn": {"title", "content"}}
        body = next((v for v in body.values() if isinstance(v, dict) and "content" in v), {})
    out: list[Segment] = []
    mentioned = after_bot = False
    title = body.get("title")
    if isinstance(title, str) and title.strip():
        out.append(Text(title.strip() + "\n"))
    paragraphs = body.get("content")
    for para in paragraphs if isinstance(paragraphs, list) else []:
        for node in para if isinstance(para, list) else []:
            if not isinstance(node, dict):
                continue
            tag = node.get("tag")
            if tag in ("text", "a", "code_block", "md") and isinstance(node.get("text"), str):
                out.append(Text(node["text"].lstrip(" ,，:：") if after_bot else node["text"]))
                after_bot = False
            elif tag == "at":
                raw_uid = node.get("user_id")
                uid = raw_uid if isinstance(raw_uid, str) else ""
                m = mentions.get(uid)
                oid = m.open_id if m else uid
                if bot and oid == bot:
                    mentioned = after_bot = True
                elif m is not None:
                    out.append(Mention(m.open_id, m.name))
                elif oid.startswith("ou_") and ID.fullmatch(oid):
                    name = node.get("user_name")
                    out.append(Mention(oid, name if isinstance(name, str) else ""))
            elif tag == "img" and isinstance(node.get("image_key"), str) and ID.fullmatch(node["image_key"]):
                out.append(Image(file_id=f"{message_id}:image:{node['image_key']}"))
            elif tag == "media" and isinstance(node.get("file_key"), str) and ID.fullmatch(node["file_key"]):
                out.append(Video(file_id=f"{message_id}:file:{node['file_key']}", mime="video/mp4"))
        out.append(Text("\n"))
    merged = _merge(out)
    if merged and isinstance(merged[-1], Text):
        merged[-1] = Text(merged[-1].text.rstrip())
    return [s for s in merged if not (isinstance(s, Text) and not s.text)], mentioned


def resource_of(file_id: str) -> tuple[str, str, str]:
    """`(message_id, type, key)` of a media segment's file_id."""
    parts = file_id.split(":", 2)
    if len(parts) != 3 or parts[1] not in ("image", "file") or not all(parts):
        raise BadPayload(f"not a Feishu resource id: {file_id!r}")
    return parts[0], parts[1], parts[2]
