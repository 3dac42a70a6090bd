"""Bearer tokens on the hub's own HTTP paths, compared in constant time."""

from __future__ import annotations

import hmac

from pydantic import SecretStr


def bearer_matches(header: str | None, expected: SecretStr) -> bool:
    """Whether an `Authorization` header carries `Bearer <expected>` (scheme in any case)."""
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Bytes, so that a header with non-ASCII characters is a mismatch, never an exception.
    given_b = given.strip().encode("utf-8", "backslashreplace")
    return hmac.compare_digest(given_b, expected.get_secret_value().encode("utf-8"))
