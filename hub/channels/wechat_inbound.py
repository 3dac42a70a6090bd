"""What WeChat and WeCom post to the hub: signature checks, safe-mode AES, and parsing to segments.

The cryptography and XML parsing are wechatpy's; signatures are compared in constant time.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import xmltodict
from wechatpy.utils import WeChatSigner

from hub.errors import BadPayload, VerificationFailed
from hub.events import Audio, ChatRef, Event, Image, Message, Segment, Text, Unsupported, User, Video

VOICE_MIME = {"amr": "audio/amr", "mp3": "audio/mpeg", "speex": "audio/speex", "silk": "audio/silk"}


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
        if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
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
    try:
        doc = xmltodict.parse(body)
    except Exception as exc:  # expat errors for malformed or hostile XML
        raise BadPayload(f"body is not XML ({type(exc).__name__})") from None
    root = doc.get("xml") if isinstance(doc, dict) else None
    if not isinstance(root, dict):
        raise BadPayload("body has no <xml> root")
    return root


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
    """Parse decrypted callback XML with wechatpy into segments the hub understands."""
    if enterprise:
        from wechatpy.enterprise import parse_message
    else:
        from wechatpy import parse_message
    try:
        msg = parse_message(xml)
    except Exception as exc:
        raise BadPayload(f"not a WeChat message ({type(exc).__name__})") from None
    if msg is None:
        raise BadPayload("empty message")
    raw: dict[str, Any] = msg._data
    sender = str(raw.get("FromUserName") or "")
    if not sender:
        raise BadPayload("message without FromUserName")
    kind = str(raw.get("MsgType") or "").lower()
    return Inbound(
        kind=kind,
        event=str(raw.get("Event") or "").lower() if kind == "event" else "",
        sender=sender,
        receiver=str(raw.get("ToUserName") or ""),
        create_time=str(raw.get("CreateTime") or ""),
        msg_id=str(raw.get("MsgId") or raw.get("MsgID") or ""),
        agent_id=str(raw.get("AgentID") or ""),
        message=Message(tuple(_segments(kind, raw))),
    )


def _segments(kind: str, raw: dict[str, Any]) -> list[Segment]:
    def s(key: str) -> str:
        value = raw.get(key)
        return str(value) if value is not None else ""

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
