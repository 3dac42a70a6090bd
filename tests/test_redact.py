"""Secrets stay out of what the hub logs, stores and prints: URLs masked, SQL never logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import RequestInfo
from aiohttp.client_exceptions import ClientResponseError
from fake_telegram import TOKEN, FakeTelegram, error, message_update, post_update, telegram_toml
from harness import FakeServer, eventually, make_settings, running_hub, text_of, web_chat
from jobs_helpers import EventStream, has_text, job_ref, providers_toml
from multidict import CIMultiDict, CIMultiDictProxy
from sqlalchemy import text
from test_config import check_config, mistakes
from yarl import URL

from hub.errors import ProviderError, SendError
from hub.events import Image, Message
from hub.logs import setup_logging
from hub.redact import safe_text, safe_url
from hub.routing.context import Context
from hub.storage.db import Database
from hub.storage.migrate import migrate

SECRET_PART = TOKEN.split(":", 1)[1]


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("postgresql+asyncpg://hub:pg-secret@db/hub", "postgresql+asyncpg://hub:***@db/hub"),
        ("https://x/y?key=abc&sig=def", "https://x/y?***"),
        ("https://x/y#access_token=abc", "https://x/y"),
        (f"https://api.telegram.org/file/bot{TOKEN}/photos/a.png", "https://api.telegram.org/file/bot***/photos/a.png"),
        (f"http://127.0.0.1:8081/bot{TOKEN}/sendPhoto", "http://127.0.0.1:8081/bot***/sendPhoto"),
        ("sqlite+aiosqlite:///./data/hub.db", "sqlite+aiosqlite:///./data/hub.db"),
        ("https://user@example.com:8443/a/b", "https://user@example.com:8443/a/b"),
        ("https://models.example.com/v1", "https://models.example.com/v1"),
    ],
)
def test_safe_url(url: str, safe: str) -> None:
    assert safe_url(url) == safe


def test_an_aiohttp_error_that_carries_the_url_is_made_safe() -> None:
    url = URL(f"https://api.telegram.org/file/bot{TOKEN}/videos/v.mp4?expires=1&signature=zzz")
    info = RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    exc = ClientResponseError(info, (), status=404, message="Not Found")
    assert SECRET_PART in str(exc)  # what aiohttp says
    said = safe_text(f"{type(exc).__name__}: {exc}")
    assert SECRET_PART not in said and "signature" not in said
    assert "https://api.telegram.org/file/bot***/videos/v.mp4?***" in said
    # Every reason the outbox or a job records goes through the same masking.
    assert SECRET_PART not in str(SendError(str(exc), retryable=True))
    assert "zzz" not in str(ProviderError(f"download: {exc}", retryable=True))
    assert safe_text(f"token bot{TOKEN} refused") == "token bot*** refused"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("", "aiosqlite", "sqlalchemy", "sqlalchemy.engine", "sqlalchemy.pool")
    levels = {n: logging.getLogger(n).level for n in names}
    handlers = logging.getLogger().handlers[:]
    yield
    logging.getLogger().handlers[:] = handlers
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


async def test_debug_logs_carry_no_statement_parameters_and_no_url_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    setup_logging("debug")
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    await migrate(db)
    await db.start()
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("SELECT :p"), {"p": "a whole private message"})
    finally:
        await db.close()
    logging.getLogger("hub.test").warning("event=x error=%s", f"GET http://h:1/file/bot{TOKEN}/a?sig=abc failed")
    err = capsys.readouterr().err
    assert "a whole private message" not in err
    assert SECRET_PART not in err and "sig=abc" not in err
    assert "error=GET http://h:1/file/bot***/a?*** failed" in err
    assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("sqlalchemy.engine.Engine").isEnabledFor(logging.INFO)


def test_check_config_masks_passwords_and_queries_in_every_url(tmp_path: Path) -> None:
    toml = """
[http]
public_url = "https://bot.example.com/?k=public-secret"
[web]
token = "web-token-secret-1"
[database]
url = "postgresql+asyncpg://hub:pg-secret@db/hub"
[[models]]
name = "qwen"
base_url = "https://models.example.com/v1?api-key=model-secret"
model = "qwen-max"
[providers.music]
base_url = "https://music:music-secret@music.example.com"
"""
    done = check_config(tmp_path, toml)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for secret in ("public-secret", "pg-secret", "model-secret", "music-secret", "web-token-secret-1"):
        assert secret not in out
    assert "postgresql+asyncpg://hub:***@db/hub" in out
    assert "https://models.example.com/v1?***" in out
    assert "https://bot.example.com/?***" in out
    assert "https://music:***@music.example.com" in out
    # A mistake that quotes the value is masked too.
    bad = check_config(tmp_path, '[http]\npublic_url = "ftp://bot.example.com/?token=quoted-secret"\n')
    assert bad.returncode == 2
    assert "quoted-secret" not in bad.stderr
    assert "ftp://bot.example.com/?***" in mistakes(bad)["http.public_url"]


async def test_a_failed_media_download_records_no_bot_token_in_the_outbox(tmp_path: Path) -> None:
    tg = FakeTelegram()
    await tg.start()
    try:
        async with running_hub(make_settings(tmp_path, telegram_toml(tg.url))) as h:
            url = f"{tg.url}/file/bot{TOKEN}/photos/missing.png?sig=topsecret"

            async def skill(ctx: Context) -> None:
                await ctx.reply(Message.of(Image(url=url)))

            h.hub.router.register("media", skill, description="answer with media")
            tg.script("sendPhoto", error(400, "Bad Request: wrong file identifier/HTTP URL specified"))
            await post_update(h.url, message_update("/media"))

            async def recorded() -> bool:
                rows = await h.hub.outbox_repo.all_rows()
                return bool(rows) and rows[0]["last_error"] is not None

            await eventually(recorded, timeout=20)
            (row,) = await h.hub.outbox_repo.all_rows()
    finally:
        await tg.stop()
    assert "404" in row["last_error"] and row["status"] == "failed"  # a missing file is not retried
    assert SECRET_PART not in row["last_error"] and "topsecret" not in row["last_error"]


async def test_a_provider_message_with_a_signed_url_is_stored_and_told_without_its_query(tmp_path: Path) -> None:
    provider = FakeServer()
    provider.on("POST", "/v1/api/video/submit", lambda rec: {"id": "7", "status": "queued"})
    message = "could not write https://cos.example.com/out/7.mp4?q-signature=cos-secret"
    provider.on(
        "POST", "/v1/api/video/query", lambda rec: {"id": "7", "status": "failed", "error": {"message": message}}
    )
    await provider.start()
    try:
        async with running_hub(make_settings(tmp_path, providers_toml(hunyuan=provider.url))) as h:
            async with EventStream(h.url, "r1") as events:
                job_id = job_ref(text_of(await web_chat(h.url, "r1", "/video a cat")))
                told = text_of(await events.until(has_text("failed")))
            job = await h.hub.jobs.get(job_id)
    finally:
        await provider.stop()
    assert told.endswith("failed: could not write https://cos.example.com/out/7.mp4?***")
    assert job is not None and job.error == "could not write https://cos.example.com/out/7.mp4?***"
