"""Who may talk to the OneBot endpoints: the access token of the reverse WebSocket, and the
HMAC-SHA1 signature of HTTP POST events, both compared in constant time.

With no token (or no secret) configured, only a peer on a loopback address is let in: the
implementation usually runs on the same machine, and anyone else could post events as any
account. The peer is the TCP peer, never a header a client can write.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from hub.errors import VerificationFailed


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def given_token(request: web.Request) -> str | None:
    """`Authorization: Bearer <t>` (or `Token <t>`), else `?access_token=` (the spec allows both)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    query = request.query.get("access_token")
    return query or None


def check_token(request: web.Request, token: str | None) -> None:
    if token is None:
        if not _loopback(request):
            raise VerificationFailed("no [onebot] access_token configured: only local connections", 403)
        return
    given = given_token(request)
    if given is None:
        raise VerificationFailed("access token required", 401)
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise VerificationFailed("wrong access token", 403)


def check_signature(request: web.Request, body: bytes, secret: str | None) -> None:
    if secret is None:
        if not _loopback(request):
            raise VerificationFailed("no [onebot] secret configured: only local posts", 403)
        return
    header = request.headers.get("X-Signature", "")
    if not header:
        raise VerificationFailed("X-Signature required", 401)
    # One C call: building an hmac object per event cost more than the digest itself.
    expected = b"sha1=" + hmac.digest(secret.encode(), body, "sha1").hex().encode()
    if not hmac.compare_digest(expected, header.strip().lower().encode()):
        raise VerificationFailed("wrong signature", 403)
