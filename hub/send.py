"""`hub send`: a script's way into the delivery API of a running hub."""

from __future__ import annotations

import asyncio
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from hub.settings import Settings

EXIT = {"sent": 0, "failed": 1, "waiting": 3, "queued": 4}


class SendFailed(Exception):
    """The API refused, or could not be reached: exit 2 with this line."""


def default_url(settings: Settings) -> str:
    host = settings.http.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{settings.http.port}"


def media_type(name: str, mime: str | None = None) -> str:
    mime = mime or mimetypes.guess_type(name)[0] or ""
    major = mime.split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "file"


async def _answer(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return {"error": (await resp.text())[:200]}


async def _media_item(http: aiohttp.ClientSession, base: str, ref: str) -> dict[str, str]:
    if ref.startswith(("http://", "https://")):
        return {"type": media_type(ref.split("?", 1)[0]), "url": ref}
    path = Path(ref)
    if not await asyncio.to_thread(path.is_file):
        raise SendFailed(f"--media: no such file: {ref}")
    form = aiohttp.FormData()
    data = await asyncio.to_thread(path.read_bytes)
    form.add_field("file", data, filename=path.name, content_type=mimetypes.guess_type(path.name)[0])
    async with http.post(f"{base}/api/v1/media", data=form) as resp:
        body = await _answer(resp)
        if resp.status != 200:
            raise SendFailed(f"upload of {ref} refused: {resp.status} {body.get('error', '')}")
    return {"type": media_type(path.name), "media_id": str(body["media_id"])}


async def send(
    settings: Settings,
    *,
    url: str | None,
    to: str,
    text: str | None,
    media: list[str],
    key: str | None,
    wait: bool,
    wait_s: float,
) -> int:
    if settings.api.token is None:
        raise SendFailed("api.token: not set: give the hub's [api] token in the config or HUB_API__TOKEN")
    base = (url or default_url(settings)).rstrip("/")
    headers = {"Authorization": f"Bearer {settings.api.token.get_secret_value()}"}
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as http:
            items = [await _media_item(http, base, m) for m in media]
            body: dict[str, Any] = {"to": to, "media": items}
            if text:
                body["text"] = text
            extra = {"Idempotency-Key": key} if key else {}
            async with http.post(f"{base}/api/v1/messages", json=body, headers=extra) as resp:
                answer = await _answer(resp)
                if resp.status != 202:
                    field = f" ({answer['field']})" if answer.get("field") else ""
                    raise SendFailed(f"refused: {resp.status} {answer.get('error', '')}{field}")
            item_id = str(answer["id"])
            print(item_id, flush=True)
            if not wait:
                return 0
            return await _wait(http, base, item_id, wait_s)
    except aiohttp.ClientError as exc:
        raise SendFailed(f"cannot reach the hub at {base} (is it running?): {exc}") from None


async def _wait(http: aiohttp.ClientSession, base: str, item_id: str, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    status, error = "queued", None
    while True:
        async with http.get(f"{base}/api/v1/messages/{item_id}") as resp:
            answer = await _answer(resp)
            if resp.status != 200:
                raise SendFailed(f"status of {item_id}: {resp.status} {answer.get('error', '')}")
        status, error = answer["status"], answer.get("error")
        if status != "queued" or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    print(f"{status}: {error}" if error and status == "failed" else status, flush=True)
    return EXIT.get(status, 1)


def run(settings: Settings, args: Any) -> int:
    try:
        return asyncio.run(
            send(
                settings,
                url=args.url,
                to=args.to,
                text=args.text,
                media=args.media or [],
                key=args.key,
                wait=args.wait,
                wait_s=args.timeout,
            )
        )
    except SendFailed as exc:
        print(f"hub send: {exc}", file=sys.stderr)
        return 2
