"""What `hub run` imports on the embedded default (SQLite, web chat alone): nothing it does not use.

The real process runs under `python -X importtime`, which names every module as it is first
imported, from start through serving to exit; a heavy import creeping back into the start path
(a platform SDK, the model client, the migration tool on a current schema) fails here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.harness import HubProcess

# Heavy, and not needed by a hub with the web chat alone and a current schema.
NOT_AT_START = {
    "alembic",  # only when the schema is not at HEAD
    "mako",
    "aiogram",  # the platform SDKs: only with their channel enabled
    "lark_oapi",
    "wechatpy",
    "cryptography",
    "nacl",
    "xmltodict",  # XML bodies: WeChat and WeCom
    "openai",  # only with [[models]] or an image provider
    "httpx",
    "apscheduler",  # only with a video or music provider
    "prometheus_client",
    "asyncpg",  # only on PostgreSQL
    "tomllib",  # only with a configuration file (this start has none)
    "difflib",  # only to suggest a key for a mistake in the configuration
}
NOT_AT_START_HUB = (
    "hub.channels.telegram",
    "hub.channels.wechat",
    "hub.channels.feishu",
    "hub.channels.qq",
    "hub.channels.onebot",
    "hub.providers.chat_models",
    "hub.providers.generation",  # only with a [providers.*] section
    "hub.client",
    "hub.api",  # the delivery API: only with [api] token
    "sqlalchemy.dialects.postgresql",
)


def imported(log: str) -> set[str]:
    """Every module named by -X importtime ("import time: self | cumulative | name")."""
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2 and "self [us]" not in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


async def run_once(tmp_path: Path) -> set[str]:
    proc = HubProcess(["-X", "importtime", "-m", "hub", "run"], {"HUB_HTTP__PORT": "0"}, tmp_path)
    try:
        url = await proc.start(timeout=60)
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/", "/metrics"):
                async with http.get(url + path) as resp:
                    assert resp.status == 200, path
        assert await asyncio.to_thread(proc.terminate) == 0, proc.logs()
    finally:
        proc.kill()
    return imported(proc.logs())


@pytest.mark.slow
async def test_the_default_start_imports_no_sdk_and_no_migration_tool(tmp_path: Path) -> None:
    first = await run_once(tmp_path)  # a new database: migrations run, alembic is needed
    assert {"aiohttp", "sqlalchemy", "alembic"} <= first

    modules = await run_once(tmp_path)  # the schema is current: every later start
    assert {"aiohttp", "sqlalchemy", "hub.channels.web"} <= modules
    tops = {name.split(".")[0] for name in modules}
    assert sorted(tops & NOT_AT_START) == []
    assert sorted(m for m in modules if m.startswith(NOT_AT_START_HUB)) == []
