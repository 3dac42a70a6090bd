"""What WeChat and WeCom post to the hub: signature checks, safe-mode AES, and parsing to segments.

The cryptography is wechatpy's, the XML parsing hub.channels.payload's (no DTDs, UTF-8 only);
signatures are compared in constant time, and every field read has the type the platform
documents (text, or digits for ids and times), else BadPayload.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from wechatpy.utils import WeChatSigner

from hub.channels.payload import parse_xml, text_field
from hub.errors import BadPayload, VerificationFailed
from hub.events import Audio, ChatRef, Event, Image, Message, Segment, Text, Unsupported, User, Video

VOICE_MIME = {"amr": "audio/amr", "mp3": "audio/mpeg", "speex": "audio/speex", "silk": "audio/silk"}
# An OpenID, a WeCom UserID (letters, digits and `_-@.`), an account or corp id: never `:` or
# `#`, which would change the meaning of the ChatRef they end up in.
USER_ID = re.compile(r"[A-Za-z0-9_@.\-]{1,128}")
NAME = re.compile(r"[A-Za-z0-9_]{1,64}")  # MsgType, Event
MSG_ID = re.compile(r"[0-9]{1,20}")  # a 64-bit integer
NUMBER = re.compile(r"[0-9]{1,12}")  # CreateTime, AgentID
# Fields read as plain text when present.
TEXT_FIELDS = (
    "Content", "PicUrl", "MediaId", "Format", "Recognition", "Location_X", "Location_Y",
    "Label", "Title", "Url", "EventKey",
)  # fmt: skip


def signature(*parts: str) -> str:
    """SHA1 of the sorted concatenation: the `signature` and `msg_signature` of WeChat callbacks."""
    signer = WeChatSigner()
    signer.add_data(*parts)
    return str(signer.signature)


class CallbackCrypto:
    """Checks and, in safe mode, decrypts the callbacks of one Official Account or WeCom app.

    `receiver_id` is the app id (Official Account) or the corp id (WeCom): the plaintext ends
    with it, and a message encrypted for another receiver is refused.
    """

    def __init__(self, token: str, aes_key: str | None, receiver_id: str, *, enterprise: bool) -> None:
        self.token = token
        self.receiver_id = receiver_id
        self.enterprise = enterprise
        self._crypto: Any = None
        self._prp: Any = None
        if aes_key:
            if enterprise:
                from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto
            else:
                from wechatpy.crypto import PrpCrypto, WeChatCrypto
            self._crypto = WeChatCrypto(token, aes_key, receiver_id)
            self._prp = PrpCrypto(self._crypto.key)

    @property
    def safe(self) -> bool:
        return self._crypto is not None

    def check(self, given: str | None, *parts: str) -> None:
        """Raise VerificationFailed unless `given` is the signature of the token and `parts`."""
        if not given:
            raise VerificationFailed("missing signature", 401)
        expected = signature(self.token, *parts)
        # surrogatepass: a query holding bytes that are not UTF-8 is a wrong signature, not a crash.
        if not hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "surrogatepass")):
            raise VerificationFailed("wrong signature", 403)

    def decrypt(self, encrypted: str) -> str:
        """The plaintext of an `Encrypt` value (check its signature first)."""
        if self._prp is None:
            raise BadPayload("an encrypted message, but no encoding_aes_key is configured")
        from wechatpy.enterprise.exceptions import InvalidCorpIdException
        from wechatpy.exceptions import InvalidAppIdException

        try:
            return str(self._prp.decrypt(encrypted, self.receiver_id))
        except (InvalidAppIdException, InvalidCorpIdException):
            raise VerificationFailed("encrypted for another app", 403) from None
        except Exception as exc:  # bad base64, bad padding, garbage after the wrong key
            raise BadPayload(f"Encrypt does not decrypt ({type(exc).__name__})") from None

    def encrypt_reply(self, xml: str, nonce: str, timestamp: str) -> str:
        """A passive reply in safe mode: the reply XML wrapped, encrypted and signed."""
        return str(self._crypto.encrypt_message(xml, nonce, timestamp))


def xml_fields(body: bytes) -> dict[str, Any]:
    """The children of the `<xml>` root, or BadPayload."""
    return parse_xml(body)


def open_envelope(crypto: CallbackCrypto, body: bytes, query: Any) -> str:
    """The message XML of a POST: verified and decrypted in safe mode, verified in plain mode.

    With an encoding_aes_key configured only safe mode is accepted: the plain `signature`
    covers the token, timestamp and nonce but not the body, so anyone who saw one request
    could replay its signature with a body of their own.
    """
    timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
    if crypto.safe:
        msg_signature = query.get("msg_signature")
        if not msg_signature:
            raise VerificationFailed("safe mode: msg_signature required", 401)
        encrypted = xml_fields(body).get("Encrypt")
        if not isinstance(encrypted, str) or not encrypted:
            raise BadPayload("safe mode: no <Encrypt> in the body")
        crypto.check(msg_signature, timestamp, nonce, encrypted)
        return crypto.decrypt(encrypted)
    crypto.check(query.get("signature"), timestamp, nonce)
    return body.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Inbound:
    """One parsed callback: a user message or an event."""

    kind: str  # text, image, voice, video, shortvideo, location, link, event, ...
    event: str  # for kind "event": subscribe, unsubscribe, click, ... (lowercase)
    sender: str
    receiver: str  # the account's own id (ToUserName), the sender of a passive reply
    create_time: str
    msg_id: str
    agent_id: str
    message: Message

    @property
    def event_id(self) -> str:
        """What deduplicates WeChat's retries: MsgId, or FromUserName + CreateTime for events."""
        return self.msg_id if self.msg_id and self.msg_id != "0" else f"{self.sender}:{self.create_time}"

    def to_event(self, channel: str, *, body_signed: bool = True) -> Event:
        """The hub's event for this callback: always a private chat with the sender."""
        return Event(
            id=self.event_id,
            channel=channel,
            chat=ChatRef(channel, "private", self.sender),
            sender=User(channel, self.sender),
            message=self.message,
            body_unauthenticated=not body_signed,
        )


def parse_inbound(xml: str, *, enterprise: bool) -> Inbound:
    """Parse decrypted callback XML into segments the hub understands, checking field types."""
    if not xml:
        raise BadPayload("empty message")
    raw = parse_xml(xml.encode("utf-8", "surrogatepass"))
    kind = text_field(raw, "MsgType", pattern=NAME, required=True).lower()
    event = text_field(raw, "Event", pattern=NAME, required=kind == "event").lower()
    fields = {name: text_field(raw, name) for name in TEXT_FIELDS}
    # WeCom writes MsgId; some Official Account events write MsgID.
    msg_id = text_field(raw, "MsgId", pattern=MSG_ID) or text_field(raw, "MsgID", pattern=MSG_ID)
    if not enterprise and event == "subscribe":
        event = _subscribe_kind(fields)
    return Inbound(
        kind=kind,
        event=event if kind == "event" else "",
        sender=text_field(raw, "FromUserName", pattern=USER_ID, required=True),
        receiver=text_field(raw, "ToUserName", pattern=USER_ID),
        create_time=text_field(raw, "CreateTime", pattern=NUMBER),
        msg_id=msg_id,
        agent_id=text_field(raw, "AgentID", pattern=NUMBER),
        message=Message(tuple(_segments(kind, {**fields, "Event": event}))),
    )


def _subscribe_kind(fields: dict[str, str]) -> str:
    """A follow by scanning a QR code names its scene in EventKey (read as wechatpy does)."""
    key = fields["EventKey"]
    if key.startswith(("scanbarcode|", "scanimage|")):
        return "subscribe_scan_product"
    if key.startswith("qrscene_"):
        fields["EventKey"] = key.removeprefix("qrscene_")
        return "subscribe_scan"
    return "subscribe"


def _segments(kind: str, raw: dict[str, str]) -> list[Segment]:
    def s(key: str) -> str:
        return raw.get(key, "")

    match kind:
        case "text":
            return [Text(s("Content"))]
        case "image":
            return [Image(url=s("PicUrl") or None, file_id=s("MediaId") or None, mime="image/jpeg")]
        case "voice":
            fmt = s("Format").lower()
            voice = Audio(file_id=s("MediaId") or None, mime=VOICE_MIME.get(fmt), voice=True)
            # WeChat's own speech recognition, when the account has it on: the text to answer.
            recognition = s("Recognition").strip()
            return [Text(recognition), voice] if recognition else [voice]
        case "video" | "shortvideo":
            return [Video(file_id=s("MediaId") or None, mime="video/mp4")]
        case "location":
            label = s("Label")
            return [Unsupported("location", f"{label} ({s('Location_X')}, {s('Location_Y')})".strip())]
        case "link":
            return [Unsupported("link", f"{s('Title')} {s('Url')}".strip())]
        case "event":
            return [Unsupported(f"event:{s('Event').lower()}", s("EventKey"))]
    return [Unsupported(kind or "unknown")]
