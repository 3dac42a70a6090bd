"""The HTTP API of WeChat Official Accounts and WeCom: access_token cache, calls, media upload.

Both platforms share the shape: a token in the query string, JSON answers with `errcode`, the
same token errors and the same rate-limit codes. Every call goes through aiohttp; each channel
owns one `WeChatApi` (one client session, one token cache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from hub import jsoncodec
from hub.channels.platform import PlatformApi, TokenRefused
from hub.errors import SendError

log = logging.getLogger("hub.wechat_api")

# The token was refused (invalid, expired, not the latest): fetch a new one and try once more.
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
# Busy or rate-limited: worth another try after this many seconds.
RETRY_AFTER: Mapping[int, float] = {
    -1: 2.0,  # system busy
    45009: 60.0,  # API call quota reached
    45011: 10.0,  # API called too often
    45033: 60.0,  # WeCom: too many concurrent calls
}
# Final for the message, with what the admin should know.
FINAL_REASONS: Mapping[int, str] = {
    45015: "outside the 48-hour window after the user's last message",
    45047: "too many messages since the user last wrote",
    43004: "the user does not follow the account",
    40003: "not a user of this account",
    81013: "not a member of the app's visible range",
}


def send_error(path: str, code: int, errmsg: str) -> SendError:
    """The one place a WeChat/WeCom errcode becomes a SendError the outbox understands."""
    reason = f"{path}: errcode {code} {errmsg}".strip()
    if code in FINAL_REASONS:
        return SendError(f"{reason} ({FINAL_REASONS[code]})", retryable=False)
    if code in TOKEN_ERRORS:
        return SendError(reason, retryable=True, retry_after=5.0)
    if code in RETRY_AFTER:
        return SendError(reason, retryable=True, retry_after=RETRY_AFTER[code])
    return SendError(reason, retryable=False)


FormFactory = Callable[[], aiohttp.FormData]


class WeChatApi(PlatformApi):
    """Calls to `<api_base><path>?access_token=...`, with the token refreshed on 40001/42001/40014."""

    def __init__(self, api_base: str, token_path: str, token_params: Mapping[str, str]) -> None:
        super().__init__(api_base)
        self._token_path = token_path
        self._token_params = dict(token_params)

    async def _fetch_token(self) -> tuple[str, float]:
        data = await self._request("GET", self._token_path, params=self._token_params)
        code = int(data.get("errcode") or 0)
        token = data.get("access_token")
        if code != 0 or not isinstance(token, str) or not token:
            # A wrong secret, or an IP not on the allowlist.
            error = send_error(self._token_path, code, str(data.get("errmsg", "")))
            raise TokenRefused(str(error), retry_after=error.retry_after or 60.0)
        return token, float(data.get("expires_in") or 7200)

    async def call(
        self,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        form: FormFactory | None = None,
    ) -> dict[str, Any]:
        """POST to an API path; returns the answer when errcode is 0, else raises SendError."""
        token = await self.tokens.get()
        for attempt in (1, 2):
            query = {**(params or {}), "access_token": token}
            data = await self._request("POST", path, params=query, json=json, form=form)
            code = int(data.get("errcode") or 0)
            if code == 0:
                return data
            if code in TOKEN_ERRORS and attempt == 1:
                log.info("event=token_refused path=%s errcode=%d", path, code)
                token = await self.tokens.renew(token)
                continue
            raise send_error(path, code, str(data.get("errmsg", "")))
        raise AssertionError("unreachable")

    async def upload(self, kind: str, data: bytes, filename: str, mime: str) -> str:
        """Upload temporary media (`type=kind`); returns its media_id."""

        def form() -> aiohttp.FormData:
            f = aiohttp.FormData()
            f.add_field("media", data, filename=filename, content_type=mime)
            return f

        started = time.perf_counter()
        out = await self.call("/cgi-bin/media/upload", params={"type": kind}, form=form)
        media_id = out.get("media_id") or out.get("thumb_media_id")
        if not isinstance(media_id, str) or not media_id:
            raise SendError("/cgi-bin/media/upload: answer without media_id", retryable=True)
        log.info(
            "event=media_uploaded kind=%s bytes=%d ms=%.0f", kind, len(data), (time.perf_counter() - started) * 1000
        )
        return media_id

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str],
        json: Mapping[str, Any] | None = None,
        form: FormFactory | None = None,
    ) -> dict[str, Any]:
        status, body, _ = await self.request(
            method, path, params=params, json=json, form=form() if form is not None else None
        )
        if status >= 500 or status == 429:
            raise SendError(f"{path}: HTTP {status}", retryable=True)
        if status >= 400:
            raise SendError(f"{path}: HTTP {status}", retryable=status in (408, 409))
        try:
            answer = jsoncodec.loads(body)
        except ValueError:
            raise SendError(f"{path}: answer is not JSON", retryable=True) from None
        if not isinstance(answer, dict):
            raise SendError(f"{path}: answer is not a JSON object", retryable=True)
        return answer
