"""Feishu event crypto: `{"encrypt": ...}` bodies and the `X-Lark-Signature` header.

The AES part is lark-oapi's (`AESCipher`: key = SHA-256(encrypt_key), IV = the first 16
bytes); the signature check is written here because the SDK's crashes on a missing header
and compares with `!=`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from lark_oapi.core.utils.decryptor import AESCipher

from hub.errors import BadPayload, VerificationFailed

TIMESTAMP = "X-Lark-Request-Timestamp"
NONCE = "X-Lark-Request-Nonce"
SIGNATURE = "X-Lark-Signature"
# An encrypted event is a few KB; Feishu's own limit on a callback body is far below this.
MAX_ENCRYPTED = 512 * 1024
MAX_HEADER = 256


class EventCrypto:
    def __init__(self, encrypt_key: str) -> None:
        self._key = encrypt_key
        self._cipher = AESCipher(encrypt_key)

    def decrypt(self, encrypted: object) -> str:
        """The plaintext of an `encrypt` field; BadPayload for anything that does not decrypt."""
        if not isinstance(encrypted, str) or not encrypted or len(encrypted) > MAX_ENCRYPTED:
            raise BadPayload("encrypt must be a non-empty base64 string")
        try:
            raw = base64.b64decode(encrypted, validate=True)
            return self._cipher.decrypt(raw).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise BadPayload("encrypt does not decrypt with the configured encrypt_key") from exc

    def signature(self, timestamp: str, nonce: str, body: bytes) -> str:
        return hashlib.sha256((timestamp + nonce + self._key).encode() + body).hexdigest()

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Check `X-Lark-Signature` over the raw body: 401 when missing, 403 when wrong."""
        timestamp, nonce, given = headers.get(TIMESTAMP), headers.get(NONCE), headers.get(SIGNATURE)
        if timestamp is None or nonce is None or given is None:
            raise VerificationFailed("missing X-Lark-Signature / X-Lark-Request-Timestamp / -Nonce", 401)
        if max(len(timestamp), len(nonce), len(given)) > MAX_HEADER:
            raise VerificationFailed("signature headers too long", 403)
        expected = self.signature(timestamp, nonce, body)
        if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
            raise VerificationFailed("wrong X-Lark-Signature", 403)


def token_matches(given: object, expected: str) -> bool:
    """Constant-time comparison of a verification token."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())
