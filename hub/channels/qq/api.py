"""QQ's bot API: the access token (from `token_base`), calls with `Authorization: QQBot`, and
the one mapping of its error codes to what the outbox should do."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from hub import jsoncodec
from hub.channels.platform import PlatformApi, TokenRefused
from hub.errors import SendError

log = logging.getLogger("hub.qq")

DEFAULT_API = "https://api.sgroup.qq.com"
DEFAULT_TOKEN = "https://bots.qq.com"
TOKEN_PATH = "/app/getAppAccessToken"
ANSWER_MAX = 1024 * 1024

# The hub built a wrong request: retrying cannot help, and the log must say so loudly.
BUG_CODES: Mapping[int, str] = {
    40034105: "a reply without the msg_id it answers",
    40054005: "a msg_seq used twice for one msg_id",
    40034128: "more than 5 replies to one msg_id",
}
# The platform is busy or the quota is spent: wait, then try again.
WAIT_CODES: Mapping[int, float] = {22009: 60.0, 429: 5.0}
# QQ could not fetch the media from the URL it was given: send a link instead.
MEDIA_FETCH_CODES = frozenset({304082, 304083})
# "msg_id invalid or not yours" (also what an expired one gets) and the "msg_id expired" text:
# QQ says the message can no longer be answered, whatever the hub's own count said.
EXPIRED_CODES = frozenset({40034024})
EXPIRED_TEXTS = ("msg_id已过期", "msg_id expired")


class MediaFetchFailed(SendError):
    """QQ could not download the media URL (304082/304083): the sender falls back to a link."""


class ReplyExpired(SendError):
    """QQ no longer takes replies to this msg_id: the sender tries another, or the reply waits."""


def send_error(path: str, status: int, code: int, message: str, retry_after: float | None = None) -> SendError:
    """The one place a QQ answer (HTTP status and `code`) becomes a SendError."""
    reason = f"{path}: HTTP {status} code {code} {message}".strip()
    if code in BUG_CODES:
        log.error("event=qq_bug path=%s code=%d what=%r", path, code, BUG_CODES[code])
        return SendError(f"{reason} ({BUG_CODES[code]})", retryable=False)
    if code in MEDIA_FETCH_CODES:
        return MediaFetchFailed(reason, retryable=False)
    if code in EXPIRED_CODES or any(t in message for t in EXPIRED_TEXTS):
        return ReplyExpired(reason, retryable=True)
    if code in WAIT_CODES or status == 429:
        wait = retry_after if retry_after is not None else WAIT_CODES.get(code, WAIT_CODES[429])
        return SendError(reason, retryable=True, retry_after=wait)
    if status >= 500 or status in (408, 409):
        return SendError(reason, retryable=True)
    return SendError(reason, retryable=False)


def _code(data: Mapping[str, Any]) -> int:
    for key in ("code", "err_code"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    try:
        return max(0.0, min(float(value), 3600.0)) if value else None
    except ValueError:
        return None


class QQApi(PlatformApi):
    """One client session and one token cache for the bot's calls."""

    label = "the QQ channel"

    def __init__(
        self, app_id: str, secret: str, *, api_base: str | None, token_base: str | None, timeout_s: float = 30.0
    ) -> None:
        # Tokens live 7200 s; refreshed a minute ahead, one refresh at a time.
        super().__init__(api_base or DEFAULT_API, timeout_s=timeout_s, token_margin_s=60.0)
        self.token_base = (token_base or DEFAULT_TOKEN).rstrip("/")
        self._app_id = app_id
        self._secret = secret

    async def _fetch_token(self) -> tuple[str, float]:
        body = {"appId": self._app_id, "clientSecret": self._secret}
        status, data, _ = await self._request(self.token_base + TOKEN_PATH, TOKEN_PATH, body, {})
        token = data.get("access_token")
        if status >= 400 or not isinstance(token, str) or not token:
            # A wrong secret.
            raise TokenRefused(f"{TOKEN_PATH}: HTTP {status} code {data.get('code')}")
        try:
            expires_in = float(data.get("expires_in") or 7200)  # QQ gives it as a string
        except (TypeError, ValueError):
            expires_in = 7200.0
        return token, max(1.0, expires_in)

    async def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST JSON to an API path; the answer, or a SendError from `send_error`."""
        token = await self.tokens.get()
        for attempt in (1, 2):
            headers = {"Authorization": f"QQBot {token}", "X-Union-Appid": self._app_id}
            status, data, resp_headers = await self._request(self.api_base + path, path, body, headers)
            if status < 400 and not data.get("code"):
                return data
            if status == 401 and attempt == 1:
                log.info("event=qq_token_refused path=%s", path)
                token = await self.tokens.renew(token)
                continue
            message = str(data.get("message", ""))[:200]
            raise send_error(path, status, _code(data), message, _retry_after(resp_headers))
        raise AssertionError("unreachable")

    async def _request(
        self, url: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        data = jsoncodec.dumps_bytes(body)
        http = self.http  # SendError before start
        try:
            async with http.post(
                url, data=data, headers={**headers, "Content-Type": "application/json; charset=utf-8"}
            ) as resp:
                raw = await resp.content.read(ANSWER_MAX)
                status, resp_headers = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Errors name the path, never the headers: they carry the token.
            raise SendError(f"{path}: {type(exc).__name__}", retryable=True) from None
        try:
            answer = jsoncodec.loads(raw) if raw else {}
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            if status >= 400:
                return status, {}, resp_headers
            raise SendError(f"{path}: HTTP {status}, answer is not a JSON object", retryable=True)
        return status, answer, resp_headers
