"""Inbound Telegram: an Update (aiogram's types) becomes the hub's Event, or None when Hub does
not handle it (edited messages, joins, polls, service messages, other update types)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiogram.types import Message as TgMessage
from aiogram.types import Update
from pydantic import ValidationError

from hub.errors import BadPayload
from hub.events import (
    Audio,
    ChatKind,
    ChatRef,
    Event,
    File,
    Image,
    Media,
    Mention,
    Message,
    Quote,
    Segment,
    Text,
    Unsupported,
    User,
    Video,
)

CHANNEL = "telegram"
# The update types Hub handles; registered with setWebhook and asked of getUpdates.
HANDLED_UPDATES = ("message",)
_CHAT_KINDS: dict[str, ChatKind] = {"private": "private", "group": "group", "supergroup": "group"}
_LEADING_PUNCT = re.compile(r"^[\s,:;，：；]+")
_SPACES = re.compile(r"[ \t]{2,}")
_CORE_FIELDS = {"message_id", "date", "chat", "from", "sender_chat"}
# Telegram's ids have at most 52 significant bits; a longer one is not from Telegram (and
# would not fit the columns that keep it).
_ID_LIMIT = 1 << 53


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who the bot is: the id comes from the token, the username from getMe."""

    id: int
    username: str | None = None


def load_update(data: Mapping[str, Any]) -> Update | None:
    """Validate a raw update with aiogram's types; None for update types Hub does not handle.

    A message carrying a part this aiogram version describes differently (a newer poll, say)
    loses that part rather than the whole message; a message without its core fields raises
    ValidationError.
    """
    if "message" not in data:
        return None  # edited messages, member changes, callbacks, ...: not validated at all
    try:
        return Update.model_validate(data)
    except ValidationError as exc:
        bad = {str(e["loc"][1]) for e in exc.errors() if len(e["loc"]) >= 2 and e["loc"][0] == "message"}
        message = data["message"]
        if not bad or bad & _CORE_FIELDS or not isinstance(message, Mapping):
            raise
        kept = {k: v for k, v in message.items() if k not in bad}
        return Update.model_validate({"update_id": data["update_id"], "message": kept})


def is_id(value: object) -> bool:
    """Whether `value` is an integer id as Telegram documents them (bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and -_ID_LIMIT < value < _ID_LIMIT


def check_ids(update: Update) -> None:
    """BadPayload unless every id the hub reads by hand is in Telegram's range."""
    ids: list[int | None] = [update.update_id]
    msg = update.message
    if msg is not None:
        ids += [msg.message_id, msg.chat.id, msg.message_thread_id, msg.migrate_to_chat_id]
        ids += [u.id for u in (msg.from_user, msg.sender_chat) if u is not None]
        if msg.reply_to_message is not None:
            replied = msg.reply_to_message
            ids += [replied.message_id, replied.from_user.id if replied.from_user else None]
    if not all(i is None or is_id(i) for i in ids):
        raise BadPayload("an id out of Telegram's range")


def parse_update(update: Update, me: BotIdentity) -> Event | None:
    check_ids(update)
    msg = update.message
    if msg is None:
        return None
    kind = _CHAT_KINDS.get(msg.chat.type)
    if kind is None:
        return None
    sender = _sender(msg)
    if sender is None:
        return None
    body, entities = (msg.text, msg.entities) if msg.text is not None else (msg.caption or "", msg.caption_entities)
    text, mentioned = strip_bot_mentions(body, entities or (), me)
    media = media_segments(msg)
    if not text and not media:
        return None  # joins, pins, title changes, polls, ...: nothing for a skill
    segments: list[Segment] = []
    reply_to: str | None = None
    reply_to_bot = False
    if msg.reply_to_message is not None:
        replied = msg.reply_to_message
        reply_to = str(replied.message_id)
        reply_to_bot = replied.from_user is not None and replied.from_user.id == me.id
        segments.append(Quote(reply_to, (replied.text or replied.caption or "")[:1000]))
    if mentioned:
        segments.append(Mention(str(me.id), me.username or ""))
    if text:
        segments.append(Text(text))
    segments.extend(media)
    thread = str(msg.message_thread_id) if msg.is_topic_message and msg.message_thread_id else None
    return Event(
        id=str(update.update_id),
        channel=CHANNEL,
        chat=ChatRef(CHANNEL, kind, str(msg.chat.id), thread),
        sender=sender,
        message=Message(tuple(segments)),
        mentions_bot=mentioned,
        reply_to=reply_to,
        reply_to_bot=reply_to_bot,
        # Quoting needs the message id; the event id is the update id. `lang`: the sender's app
        # language, the chat's language where nothing else chose one.
        context=_context(msg),
    )


def _context(msg: TgMessage) -> dict[str, object]:
    context: dict[str, object] = {"message_id": msg.message_id}
    code = msg.from_user.language_code if msg.from_user is not None else None
    if isinstance(code, str) and code:
        context["lang"] = code[:16]
    return context


def _sender(msg: TgMessage) -> User | None:
    if msg.sender_chat is not None and msg.sender_chat.id != msg.chat.id:
        # A channel posting into its discussion group: not a person talking to the bot.
        return None
    if msg.sender_chat is not None:
        # An anonymous group admin speaks as the group itself.
        return User(CHANNEL, str(msg.sender_chat.id), msg.sender_chat.title or "")
    if msg.from_user is None or msg.from_user.is_bot:
        return None
    return User(CHANNEL, str(msg.from_user.id), msg.from_user.full_name)


# --- the plain text message, read without aiogram's models ------------------------------------

# What a plain text message may hold to be read by hand, each key with the type it must have;
# anything else (media, a reply, a forward, a topic, a service field) goes through aiogram.
_PLAIN_MESSAGE = {"message_id": int, "date": int, "chat": dict, "from": dict, "text": str, "entities": list}
_PLAIN_CHAT = {"id": int, "type": str, "title": str, "username": str, "first_name": str, "last_name": str}
_PLAIN_USER = {
    "id": int,
    "is_bot": bool,
    "first_name": str,
    "last_name": str,
    "username": str,
    "language_code": str,
    "is_premium": bool,
}
_PLAIN_ENTITY = {"type": str, "offset": int, "length": int}
# Dates a Telegram message can carry (seconds since 1970, before 2100).
_DATE_LIMIT = 4_102_444_800


class NotPlain:
    """The update is not a plain text message: read it with aiogram's models."""


NOT_PLAIN = NotPlain()


@dataclass(frozen=True, slots=True)
class PlainEntity:
    """The part of a MessageEntity that mention stripping reads."""

    type: str
    offset: int
    length: int
    user: None = None


def _typed(obj: Mapping[str, Any], schema: Mapping[str, type], required: tuple[str, ...]) -> bool:
    """Every key known with exactly its type (no bool for an int, no coercion), the required ones
    present."""
    for key, value in obj.items():
        want = schema.get(key)
        if want is None or type(value) is not want:
            return False
    return all(key in obj for key in required)


def parse_plain(data: Mapping[str, Any], me: BotIdentity) -> Event | NotPlain | None:
    """The Event of a plain text message (the updates nearly every bot gets most), read straight
    from the JSON; None when Hub does not handle it; NOT_PLAIN for any other update, which
    `load_update` and `parse_update` read. Both ways give the same Event for the same update.

    Only exactly-typed fields of a known set are read here: an update aiogram would coerce,
    refuse or read more of is left to it.
    """
    msg = data.get("message")
    if len(data) != 2 or type(msg) is not dict or not is_id(data.get("update_id")):
        return NOT_PLAIN
    if not _typed(msg, _PLAIN_MESSAGE, ("message_id", "date", "chat", "from", "text")):
        return NOT_PLAIN
    chat, user = msg["chat"], msg["from"]
    if not _typed(chat, _PLAIN_CHAT, ("id", "type")) or not _typed(user, _PLAIN_USER, ("id", "is_bot", "first_name")):
        return NOT_PLAIN
    if not (is_id(msg["message_id"]) and is_id(chat["id"]) and is_id(user["id"]) and 0 <= msg["date"] < _DATE_LIMIT):
        return NOT_PLAIN
    entities: list[PlainEntity] = []
    for ent in msg.get("entities", ()):
        if type(ent) is not dict or not _typed(ent, _PLAIN_ENTITY, ("type", "offset", "length")):
            return NOT_PLAIN
        entities.append(PlainEntity(ent["type"], ent["offset"], ent["length"]))
    kind = _CHAT_KINDS.get(chat["type"])
    if kind is None or user["is_bot"]:
        return None
    text, mentioned = strip_bot_mentions(msg["text"], entities, me)
    if not text:
        return None
    last = user.get("last_name")
    name = f"{user['first_name']} {last}" if last else user["first_name"]
    segments: list[Segment] = [Mention(str(me.id), me.username or "")] if mentioned else []
    segments.append(Text(text))
    context: dict[str, object] = {"message_id": msg["message_id"]}
    code = user.get("language_code")
    if code:  # as `_context` reads it
        context["lang"] = code[:16]
    return Event(
        id=str(data["update_id"]),
        channel=CHANNEL,
        chat=ChatRef(CHANNEL, kind, str(chat["id"])),
        sender=User(CHANNEL, str(user["id"]), name),
        message=Message(tuple(segments)),
        mentions_bot=mentioned,
        context=context,
    )


class _Entity(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def user(self) -> Any: ...


def strip_bot_mentions(text: str, entities: Sequence[_Entity], me: BotIdentity) -> tuple[str, bool]:
    """Remove mentions of the bot (`@name` entities and text_mentions of its id) from the text.

    Entity offsets count UTF-16 code units, so the cut happens on the UTF-16 form.
    """
    if not text:
        return "", False
    units = text.encode("utf-16-le")
    cuts: list[tuple[int, int]] = []
    name = f"@{me.username}".lower() if me.username else None
    for ent in entities:
        start, end = ent.offset * 2, (ent.offset + ent.length) * 2
        if ent.type == "mention" and name is not None:
            if units[start:end].decode("utf-16-le", "replace").lower() == name:
                cuts.append((start, end))
        elif ent.type == "text_mention" and ent.user is not None and ent.user.id == me.id:
            cuts.append((start, end))
    if not cuts:
        return text.strip(), False
    kept: list[bytes] = []
    pos = 0
    for start, end in sorted(cuts):
        kept.append(units[pos:start])
        pos = max(pos, end)
    kept.append(units[pos:])
    out = b"".join(kept).decode("utf-16-le", "replace")
    out = _SPACES.sub(" ", out).strip()
    return _LEADING_PUNCT.sub("", out), True


def media_segments(msg: TgMessage) -> list[Media | Unsupported]:
    """Media of a message as segments carrying the file_id (downloaded on demand via getFile)."""
    out: list[Media | Unsupported] = []
    if msg.photo:
        best = max(msg.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        out.append(Image(file_id=best.file_id, size=best.file_size, mime="image/jpeg"))
    if msg.animation is not None:
        a = msg.animation
        out.append(Video(file_id=a.file_id, name=a.file_name, mime=a.mime_type, size=a.file_size, duration=a.duration))
    elif msg.document is not None:
        d = msg.document
        out.append(File(file_id=d.file_id, name=d.file_name, mime=d.mime_type, size=d.file_size))
    if msg.video is not None:
        v = msg.video
        out.append(Video(file_id=v.file_id, name=v.file_name, mime=v.mime_type, size=v.file_size, duration=v.duration))
    if msg.video_note is not None:
        n = msg.video_note
        out.append(Video(file_id=n.file_id, mime="video/mp4", size=n.file_size, duration=n.duration))
    if msg.voice is not None:
        vo = msg.voice
        mime = vo.mime_type or "audio/ogg"
        out.append(Audio(file_id=vo.file_id, mime=mime, size=vo.file_size, duration=vo.duration, voice=True))
    if msg.audio is not None:
        au = msg.audio
        name = au.file_name or au.title
        out.append(Audio(file_id=au.file_id, name=name, mime=au.mime_type, size=au.file_size, duration=au.duration))
    if msg.sticker is not None:
        out.append(Unsupported("sticker", msg.sticker.emoji or ""))
    for kind in ("location", "venue", "contact", "dice"):
        if getattr(msg, kind) is not None:
            out.append(Unsupported(kind))
    return out
