"""The Feishu open platform over the channel's own aiohttp session.

lark-oapi builds the JSON requests (`BaseRequest`: method, path, body); they are sent here,
never by the SDK, whose tenant-token fetch is synchronous and would block the event loop.
The tenant token is cached and refreshed ahead of expiry, and once more when a call answers
99991663/99991668; 99991400 waits until `x-ogw-ratelimit-reset`. Every answer code becomes a
SendError in `send_error`, the one place that maps them.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import lark_oapi as lark
from lark_oapi.core.model import BaseRequest

from hub import jsoncodec
from hub.channels.platform import PlatformApi, TokenRefused
from hub.errors import SendError

log = logging.getLogger("hub.feishu")

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
# The tenant token was refused (invalid or expired): fetch a new one and try once more.
TOKEN_CODES = frozenset({99991663, 99991668, 99991661})
RATE_LIMITED = 99991400
# No retry helps, and the chat cannot be reached by this bot.
FINAL_FOR_CHAT: Mapping[int, str] = {
    230002: "the bot is not in this chat",
    230013: "the user is outside the app's availability",
    230006: "the app has no bot ability",
    230035: "the bot may not send to this chat",
}
# Busy or throttled: worth another try after this many seconds.
RETRY_CODES: Mapping[int, float] = {230020: 5.0, 11232: 5.0, 230049: 5.0, 1000004: 5.0, 1000005: 5.0}


def send_error(path: str, status: int, code: int, msg: str, *, reset_s: float | None = None) -> SendError:
    """What the outbox should do about a failed call (HTTP status and Feishu's `code`)."""
    reason = f"{path}: HTTP {status} code {code} {msg[:200]}".strip()
    if code == RATE_LIMITED:
        return SendError(reason, retryable=True, retry_after=reset_s if reset_s is not None else 1.0)
    if code in FINAL_FOR_CHAT:
        return SendError(f"{reason} ({FINAL_FOR_CHAT[code]})", retryable=False, final_for_chat=True)
    if code in TOKEN_CODES:
        return SendError(reason, retryable=True, retry_after=30.0)
    if code in RETRY_CODES:
        return SendError(reason, retryable=True, retry_after=RETRY_CODES[code])
    if status >= 500 or status in (408, 429) or (code == 0 and status >= 400):
        return SendError(reason, retryable=True)
    return SendError(reason, retryable=False)


def _reset_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("x-ogw-ratelimit-reset", "")))
    except ValueError:
        return None


class FeishuApi(PlatformApi):
    label = "the Feishu channel"

    def __init__(
        self,
        api_base: str,
        app_id: str,
        app_secret: str,
        *,
        rate_wait_max_s: float = 10.0,
    ) -> None:
        super().__init__(api_base)
        self._app_id = app_id
        self._app_secret = app_secret
        self._rate_wait_max = rate_wait_max_s

    # --- the token ----------------------------------------------------------------------

    async def _fetch_token(self) -> tuple[str, float]:
        body = {"app_id": self._app_id, "app_secret": self._app_secret}
        status, data, _ = await self._raw("POST", TOKEN_PATH, json=body)
        token = data.get("tenant_access_token")
        code = _code(data)
        if status != 200 or code != 0 or not isinstance(token, str) or not token:
            raise TokenRefused(str(send_error(TOKEN_PATH, status, code, str(data.get("msg", "")))))
        expire = data.get("expire")
        return token, float(expire) if isinstance(expire, int | float) and expire > 0 else 7200.0

    # --- calls --------------------------------------------------------------------------

    async def execute(self, request: BaseRequest) -> dict[str, Any]:
        """Send a request lark-oapi built; returns the answer's `data` (an object)."""
        assert request.uri is not None and request.http_method is not None
        path = request.uri
        for name, value in request.paths.items():
            path = path.replace(f":{name}", str(value))
        body = jsonlib.loads(lark.JSON.marshal(request.body)) if request.body is not None else None
        return await self.call(request.http_method.name, path, json=body, params=dict(request.queries))

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        form_factory: Callable[[], aiohttp.FormData] | None = None,
        whole: bool = False,
    ) -> dict[str, Any]:
        """A call with the tenant token; the answer's `data` (or all of it) when `code` is 0, else SendError."""
        token = await self.tokens.get()
        refreshed = False
        waits = 0
        while True:
            headers = {"Authorization": f"Bearer {token}"}
            status, data, resp_headers = await self._raw(
                method, path, json=json, params=params, form=form_factory() if form_factory else None, headers=headers
            )
            code = _code(data)
            if status == 200 and code == 0:
                if whole:
                    return data
                out = data.get("data")
                return out if isinstance(out, dict) else {}
            if code in TOKEN_CODES and not refreshed:
                log.info("event=feishu_token_refused path=%s code=%d", path, code)
                token = await self.tokens.renew(token)
                refreshed = True
                continue
            reset = _reset_after(resp_headers)
            if code == RATE_LIMITED and waits < 3 and (reset or 0.0) <= self._rate_wait_max:
                waits += 1
                log.info("event=feishu_rate_limited path=%s wait_s=%.1f", path, reset or 1.0)
                await asyncio.sleep(reset if reset is not None else 1.0)
                continue
            raise send_error(path, status, code, str(data.get("msg", "")), reset_s=reset)

    async def _raw(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        form: aiohttp.FormData | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        status, body, resp_headers = await self.request(
            method, path, params=params, json=json, form=form, headers=headers
        )
        try:
            answer = jsoncodec.loads(body)
        except ValueError:
            raise SendError(f"{path}: HTTP {status}, answer is not JSON", retryable=status >= 500) from None
        if not isinstance(answer, dict):
            raise SendError(f"{path}: HTTP {status}, answer is not a JSON object", retryable=status >= 500)
        return status, answer, resp_headers

    # --- uploads, downloads, identity ---------------------------------------------------

    async def upload_image(self, data: bytes, filename: str, mime: str) -> str:
        def form() -> aiohttp.FormData:
            f = aiohttp.FormData()
            f.add_field("image_type", "message")
            f.add_field("image", data, filename=filename, content_type=mime)
            return f

        out = await self._timed("image", len(data), self.call("POST", "/open-apis/im/v1/images", form_factory=form))
        key = out.get("image_key")
        if not isinstance(key, str) or not key:
            raise SendError("/open-apis/im/v1/images: answer without image_key", retryable=True)
        return key

    async def upload_file(
        self, file_type: str, data: bytes, filename: str, mime: str, duration_ms: int | None = None
    ) -> str:
        def form() -> aiohttp.FormData:
            f = aiohttp.FormData()
            f.add_field("file_type", file_type)
            f.add_field("file_name", filename)
            if duration_ms is not None:
                f.add_field("duration", str(duration_ms))
            f.add_field("file", data, filename=filename, content_type=mime)
            return f

        out = await self._timed(file_type, len(data), self.call("POST", "/open-apis/im/v1/files", form_factory=form))
        key = out.get("file_key")
        if not isinstance(key, str) or not key:
            raise SendError("/open-apis/im/v1/files: answer without file_key", retryable=True)
        return key

    async def _timed(self, kind: str, size: int, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        out = await call
        log.info("event=feishu_uploaded kind=%s bytes=%d ms=%.0f", kind, size, (time.perf_counter() - started) * 1000)
        return out

    async def bot_info(self) -> dict[str, Any]:
        """`GET /open-apis/bot/v3/info`: the bot's own open_id and name (answered outside `data`)."""
        path = "/open-apis/bot/v3/info"
        bot = (await self.call("GET", path, whole=True)).get("bot")
        if not isinstance(bot, dict):
            raise SendError(f"{path}: answer without bot", retryable=True)
        return bot

    async def download(self, message_id: str, kind: str, key: str) -> AsyncIterator[bytes]:
        """The bytes of a resource a user sent, streamed."""
        token = await self.tokens.get()
        path = f"/open-apis/im/v1/messages/{message_id}/resources/{key}"
        try:
            async with self.http.get(
                self.api_base + path,
                params={"type": kind},
                headers={"Authorization": f"Bearer {token}"},
                timeout=self._upload_timeout,
            ) as resp:
                if resp.status != 200:
                    raise SendError(f"{path}: HTTP {resp.status}", retryable=resp.status >= 500)
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"{path}: {type(exc).__name__}", retryable=True) from None

    async def ws_endpoint(self) -> tuple[str, dict[str, Any]]:
        """The long connection's address (`/callback/ws/endpoint`) and its client settings."""
        path = "/callback/ws/endpoint"
        body = {"AppID": self._app_id, "AppSecret": self._app_secret}
        status, data, _ = await self._raw("POST", path, json=body, headers={"locale": "zh"})
        inner = data.get("data")
        url = inner.get("URL") if isinstance(inner, dict) else None
        if status != 200 or _code(data) != 0 or not isinstance(url, str) or not url:
            raise send_error(path, status, _code(data), str(data.get("msg", "")))
        conf = inner.get("ClientConfig") if isinstance(inner, dict) else None
        return url, conf if isinstance(conf, dict) else {}


def _code(data: Mapping[str, Any]) -> int:
    code = data.get("code", 0)
    return code if isinstance(code, int) and not isinstance(code, bool) else -1
