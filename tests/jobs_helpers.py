"""Shared pieces of the jobs tests: provider config, reading the web events stream, the DB."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from fake_providers import HUNYUAN_KEY, HUNYUAN_KEY_ID, IMAGE_KEY, MUSIC_KEY

JOB_REF = re.compile(r"#([0-9a-f]{4,8})\b")


def providers_toml(
    *,
    hunyuan: str | None = None,
    music: str | None = None,
    image: str | None = None,
    image_kind: str = "openai",
    poll_s: float = 0.05,
    timeout_s: float = 60,
    job_after_s: float = 5,
) -> str:
    out = []
    if hunyuan:
        out.append(
            f'[providers.hunyuan]\nbase_url = "{hunyuan}"\napi_key = "{HUNYUAN_KEY}"\nkey_id = "{HUNYUAN_KEY_ID}"\n'
            f"poll_interval_s = {poll_s}\ntimeout_s = {timeout_s}\n"
        )
    if music:
        out.append(
            f'[providers.music]\nbase_url = "{music}"\napi_key = "{MUSIC_KEY}"\n'
            f'model = "chirp-v4"\npoll_interval_s = {poll_s}\ntimeout_s = {timeout_s}\n'
        )
    if image:
        base = f"{image}/v1" if image_kind == "openai" else image
        out.append(
            f'[providers.image]\nkind = "{image_kind}"\nbase_url = "{base}"\napi_key = "{IMAGE_KEY}"\n'
            f'model = "gpt-image-1"\ntimeout_s = 30\njob_after_s = {job_after_s}\n'
        )
    return "\n".join(out)


def job_ref(text: str) -> str:
    m = JOB_REF.search(text)
    assert m, f"no job id in {text!r}"
    return m.group(1)


class EventStream:
    """GET /api/web/events for one session, read message by message (items up to [DONE])."""

    def __init__(self, url: str, session: str) -> None:
        self._url = f"{url}/api/web/events?session={session}"
        self._http: aiohttp.ClientSession | None = None
        self._resp: aiohttp.ClientResponse | None = None
        self._buf = b""
        self._items: list[Any] = []
        self.messages: list[list[Any]] = []

    async def __aenter__(self) -> EventStream:
        self._http = aiohttp.ClientSession()
        self._resp = await self._http.get(self._url)
        assert self._resp.status == 200
        assert self._resp.headers["Content-Type"].startswith("text/event-stream")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            self._resp.close()
        if self._http is not None:
            await self._http.close()

    async def until(self, predicate: Callable[[list[Any]], bool], timeout: float = 15.0) -> list[Any]:
        """Read messages until one satisfies `predicate`; returns that message's items."""
        assert self._resp is not None
        deadline = time.monotonic() + timeout
        for message in self.messages:
            if predicate(message):
                return message
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such message within {timeout}s; got {self.messages}")
            chunk = await asyncio.wait_for(self._resp.content.readany(), timeout=remaining)
            assert chunk, "the event stream ended"
            self._buf += chunk
            while b"\n\n" in self._buf:
                block, self._buf = self._buf.split(b"\n\n", 1)
                for line in block.decode().split("\n"):
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        message, self._items = self._items, []
                        self.messages.append(message)
                        if predicate(message):
                            return message
                    else:
                        self._items.append(json.loads(data))


def has_media(kind: str) -> Callable[[list[Any]], bool]:
    return lambda items: any(isinstance(i, dict) and i.get("media", {}).get("type") == kind for i in items)


def has_text(fragment: str) -> Callable[[list[Any]], bool]:
    return lambda items: any(isinstance(i, dict) and fragment in i.get("content", "") for i in items)


def db_rows(db_path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the hub's SQLite database from outside (another process may be writing it)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
