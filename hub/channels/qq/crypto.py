"""QQ's webhook signatures: ed25519 with a key derived from the app secret.

QQ signs every request it sends (`X-Signature-Ed25519` over `X-Signature-Timestamp` + the raw
body) with the bot's key, and the URL check (op 13) asks the bot to sign `event_ts +
plain_token` with the same key. The private key's seed is the app secret repeated until it is
at least 32 bytes, cut to 32: whoever knows the secret can sign, so the verify key is the
public half of the same pair.
"""

from __future__ import annotations

import binascii

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

SEED_BYTES = 32
SIGNATURE_BYTES = 64
# A timestamp is decimal seconds; anything longer is not one.
TIMESTAMP_MAX_CHARS = 20


def seed_of(secret: str) -> bytes:
    """The ed25519 seed of an app secret: repeated to at least 32 bytes, then cut to 32."""
    raw = secret.encode("utf-8")
    if not raw:
        raise ValueError("the app secret is empty")
    while len(raw) < SEED_BYTES:
        raw += raw
    return raw[:SEED_BYTES]


class QQSigner:
    """Signs URL-check answers and verifies QQ's request signatures, for one app secret."""

    def __init__(self, secret: str) -> None:
        self._key = SigningKey(seed_of(secret))
        self._verify_key = self._key.verify_key

    @property
    def public_key_hex(self) -> str:
        return bytes(self._verify_key).hex()

    def sign(self, message: bytes) -> str:
        """Hex ed25519 signature of `message`."""
        return self._key.sign(message).signature.hex()

    def verify(self, signature_hex: str | None, timestamp: str | None, body: bytes) -> bool:
        """Whether `signature_hex` is this key's signature of `timestamp + body`."""
        if not signature_hex or not timestamp or len(timestamp) > TIMESTAMP_MAX_CHARS:
            return False
        if len(signature_hex) != 2 * SIGNATURE_BYTES:
            return False
        try:
            signature = binascii.unhexlify(signature_hex)
        except (binascii.Error, ValueError):
            return False
        try:
            self._verify_key.verify(timestamp.encode("utf-8") + body, signature)
        except (BadSignatureError, ValueError, UnicodeEncodeError):
            return False
        return True

    def validation_answer(self, plain_token: str, event_ts: str) -> dict[str, str]:
        """The answer to an op 13 URL check (only ever for a request already verified)."""
        return {"plain_token": plain_token, "signature": self.sign((event_ts + plain_token).encode("utf-8"))}
