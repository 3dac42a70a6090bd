"""WeChat plain mode, whose signature covers token, timestamp and nonce but not the body: a seen
URL cannot carry another body, a stale one is refused, every process on one database knows the
nonces, and `/admin` is refused over it unless the configuration allows it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_openai import FakeOpenAI
from fake_wechat import APP_ID, APP_SECRET, OPENID, Answer, FakeWeChatApi, WeChatServer, sign, text_xml
from harness import RunningHub, eventually, make_settings, pg_database, running_hub
from sqlalchemy import select
from test_config import check_config
from test_wechat import AES_KEY, TOKEN

from hub.channels.replay import WINDOW_S, ReplayGuard
from hub.errors import VerificationFailed
from hub.settings import Settings
from hub.storage.db import Database
from hub.storage.migrate import migrate
from hub.storage.models import audit, callback_nonces, inbox
from hub.storage.nonces import NonceRepo

ADMIN = "oADMIN"
plain = WeChatServer(TOKEN)
REFUSED_HINTS = ("encoding_aes_key", "allow_admin_in_plain_mode = true")


def plain_settings(tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI, *, extra: str = "", db: str = "") -> Settings:
    toml = f"""admins = ["wechat:{ADMIN}"]

[wechat]
enabled = true
app_id = "{APP_ID}"
app_secret = "{APP_SECRET}"
token = "{TOKEN}"
api_base = "{api.url}"
{extra}

[[models]]
name = "fake"
base_url = "{model.base_url}"
api_key = "sk-test"
model = "fake-1"
"""
    if db:
        toml += f'\n[database]\nurl = "{db}"\n'
    return make_settings(tmp_path, toml)


@pytest.fixture
async def api() -> AsyncIterator[FakeWeChatApi]:
    fake = FakeWeChatApi()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


async def rows(h: RunningHub, table: Any) -> list[Any]:
    async with h.hub.db.engine.connect() as conn:
        return list((await conn.execute(select(table))).all())


async def settle(h: RunningHub) -> None:
    """Everything stored has been handled and everything queued has gone out."""

    async def idle() -> bool:
        return await h.hub.inbox.backlog() == 0 and await h.hub.outbox_repo.backlog() == 0

    await eventually(idle)


def forged(params: dict[str, str]) -> tuple[dict[str, str], str]:
    """The captured URL with a body of the attacker's own, as the admin."""
    msg_id = str(int(hashlib.sha256(params["nonce"].encode()).hexdigest()[:12], 16))
    return params, text_xml("/admin status", msg_id, sender=ADMIN)


async def test_a_replayed_url_with_another_body_is_refused_and_nothing_runs(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    # Even with /admin allowed over plain mode, the replay alone must stop the forgery.
    settings = plain_settings(tmp_path, api, model, extra="allow_admin_in_plain_mode = true")
    async with running_hub(settings) as h:
        params, body = plain.request(text_xml("hello", "8101"))
        first = await plain.post_raw(h.url, params, body)
        assert (first.status, first.text) == (200, "success")
        await api.wait_sent(1)
        await settle(h)

        replay = await plain.post_raw(h.url, *forged(params))
        assert replay.status == 403
        retry = await plain.post_raw(h.url, params, body)  # WeChat's own retry: same URL, same body
        assert (retry.status, retry.text) == (200, "success")
        await settle(h)
        assert [r.sender for r in await rows(h, inbox)] == [f"wechat:{OPENID}"]
        assert len(api.sent()) == 1 and api.sent()[0]["text"] == {"content": "re: hello"}
        assert len(model.requests) == 1
        assert await rows(h, audit) == []


async def test_a_forged_body_is_refused_even_before_the_real_one_is_handled(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    async with running_hub(plain_settings(tmp_path, api, model)) as h:
        params, body = plain.request(text_xml("first", "8102"))
        results = await asyncio.gather(plain.post_raw(h.url, params, body), plain.post_raw(h.url, *forged(params)))
        # Whichever came first owns the nonce; the other body is refused.
        assert sorted(a.status for a in results) == [200, 403]
        await settle(h)
        assert len(await rows(h, inbox)) == 1
        assert len(await rows(h, callback_nonces)) == 1


async def test_a_timestamp_more_than_300_s_away_is_refused(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    async with running_hub(plain_settings(tmp_path, api, model)) as h:
        now = int(time.time())
        for ts in (now - WINDOW_S - 30, now + WINDOW_S + 30, 1410685589):
            answer = await plain.post(h.url, text_xml("stale", f"{ts}"), timestamp=str(ts))
            assert answer.status == 403, ts
        for ts in ("", "17e8", "+1700000000", " 1700000000", "1" * 40):
            params = {"timestamp": ts, "nonce": "n1", "signature": sign(TOKEN, ts, "n1")}
            answer = await plain.post_raw(h.url, params, text_xml("odd", "5550"))
            assert answer.status == 403, ts
        ok = await plain.post(h.url, text_xml("fresh", "8103"), timestamp=str(now - WINDOW_S + 30))
        assert ok.status == 200
        await api.wait_sent(1)
        assert [r.event_id for r in await rows(h, inbox)] == ["8103"]


async def test_safe_mode_signatures_need_no_window(tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI) -> None:
    settings = plain_settings(tmp_path, api, model, extra=f'encoding_aes_key = "{AES_KEY}"')
    safe = WeChatServer(TOKEN, AES_KEY)
    async with running_hub(settings) as h:
        # The body is under msg_signature: an old timestamp, or a nonce used twice, forges nothing.
        old = await safe.post(h.url, text_xml("old", "8104"), timestamp="1410685589", nonce="same")
        again = await safe.post(h.url, text_xml("other", "8105"), timestamp="1410685589", nonce="same")
        assert (old.status, again.status) == (200, 200)
        await api.wait_sent(2)
        assert await rows(h, callback_nonces) == []


async def test_admin_is_refused_over_plain_mode_unless_allowed(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_hub(plain_settings(tmp_path / "a", api, model)) as h:
        answer = await plain.post(h.url, text_xml("/admin status", "8106", sender=ADMIN))
        assert answer.status == 200
        await api.wait_sent(1)
        (sent,) = api.sent()
        assert sent["touser"] == ADMIN
        text = sent["text"]["content"]
        # WeChat chats are Chinese: the refusal, and the fix it names, in Chinese.
        assert "不接受管理命令" in text and all(hint in text for hint in REFUSED_HINTS)
        assert "渠道：" not in text
        (entry,) = await rows(h, audit)
        assert (entry.actor, entry.outcome) == (f"wechat:{ADMIN}", "refused")
        # A plain message from the admin is still answered as usual.
        await plain.post(h.url, text_xml("hi", "8107", sender=ADMIN))
        await api.wait_sent(2)
        assert api.sent()[1]["text"] == {"content": "re: hi"}

    allowed = plain_settings(tmp_path / "b", api, model, extra="allow_admin_in_plain_mode = true")
    async with running_hub(allowed) as h:
        await plain.post(h.url, text_xml("/admin status", "8108", sender=ADMIN))
        await api.wait_sent(3)
        assert "渠道：" in api.sent()[2]["text"]["content"]


async def test_passive_mode_retry_of_a_plain_message_still_gets_the_reply(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    async with running_hub(plain_settings(tmp_path, api, model, extra='reply_mode = "passive"')) as h:
        model.first_token_delay_s = 1.5
        params, body = plain.request(text_xml("retry me", "8109"))

        async def deliver(give_up_after: float | None) -> Answer | None:
            started = time.monotonic()
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=give_up_after)) as http:
                    async with http.post(f"{h.url}/webhooks/wechat", params=params, data=body.encode()) as resp:
                        return Answer(resp.status, await resp.text(), time.monotonic() - started)
            except TimeoutError:
                return None

        assert await deliver(0.4) is None  # WeChat gives up and retries with the same URL and body
        retry = await deliver(None)
        assert retry is not None and retry.status == 200
        assert plain.open_reply(retry.text)["Content"] == "re: retry me"
        assert (await plain.post_raw(h.url, *forged(params))).status == 403
        assert len(model.requests) == 1 and len(await rows(h, inbox)) == 1


@pytest.mark.postgres
async def test_two_hubs_on_one_postgresql_share_the_nonces(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    async with pg_database() as url:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        a_settings, b_settings = (plain_settings(tmp_path / n, api, model, db=url) for n in ("a", "b"))
        async with running_hub(a_settings) as a, running_hub(b_settings) as b:
            params, body = plain.request(text_xml("hello", "8110"))
            assert (await plain.post_raw(a.url, params, body)).status == 200
            assert (await plain.post_raw(b.url, *forged(params))).status == 403
            assert (await plain.post_raw(b.url, params, body)).status == 200  # a retry through the balancer
            # Racing: one URL, two bodies, one to each process: exactly one is accepted.
            for i in range(10):
                params, body = plain.request(text_xml(f"race {i}", f"{8200 + i}"))
                racing = await asyncio.gather(
                    plain.post_raw(a.url, params, body), plain.post_raw(b.url, *forged(params))
                )
                assert sorted(r.status for r in racing) == [200, 403]
            await api.wait_sent(11, timeout=30)
            await settle(a)
            await settle(b)
            # One message per URL was stored and answered once, whichever body won the race.
            assert len(await rows(a, inbox)) == 11
            assert len(api.sent()) == 11
            assert len(await rows(b, callback_nonces)) == 11


# --- the store and the guard, directly --------------------------------------------------------


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    await migrate(database)
    yield database
    await database.engine.dispose()


async def test_old_nonces_are_pruned_and_the_window_is_kept(db: Database) -> None:
    now = 1_800_000_000.0
    repo = NonceRepo(db, keep_s=2 * WINDOW_S)
    guard = ReplayGuard(repo, "wechat", clock=lambda: now)
    await guard.check(str(int(now) - WINDOW_S), "n1", b"<xml/>")
    await guard.check(str(int(now) + WINDOW_S), "n1", b"<xml/>")  # same nonce, other timestamp: new
    await guard.check(str(int(now) - WINDOW_S), "n1", b"<xml/>")  # a retry
    with pytest.raises(VerificationFailed):
        await guard.check(str(int(now) - WINDOW_S), "n1", b"<xml>other</xml>")
    with pytest.raises(VerificationFailed):
        await guard.check(str(int(now) - WINDOW_S - 1), "n2", b"<xml/>")
    with pytest.raises(VerificationFailed):
        await guard.check(str(int(now)), "n" * 200, b"<xml/>")
    assert await repo.count() == 2
    assert await repo.prune(now=now + WINDOW_S + 1) == 1  # the older one has left every window
    assert await repo.prune(now=now + 3 * WINDOW_S + 1) == 1
    assert await repo.count() == 0


async def test_the_store_prunes_itself_as_it_goes(db: Database) -> None:
    repo = NonceRepo(db, keep_s=2 * WINDOW_S, prune_every_s=0.0)
    assert await repo.remember("wechat", 1_000, "old", "0" * 64)
    assert await repo.remember("wechat", int(time.time()), "new", "0" * 64)
    assert await repo.count() == 1


# --- hub check-config -------------------------------------------------------------------------

WECHAT = f"[wechat]\nenabled = true\napp_id = '{APP_ID}'\napp_secret = 's'\ntoken = 't'\n"


def test_check_config_warns_that_plain_mode_is_forgeable(tmp_path: Path) -> None:
    done = check_config(tmp_path, WECHAT)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: wechat.encoding_aes_key: not set: plain-mode signatures do not cover the body, "
        "so a leaked callback URL lets anyone forge messages"
    ]
    assert "configuration is valid" in done.stdout
    safe = check_config(tmp_path, WECHAT + f"encoding_aes_key = '{AES_KEY}'\n")
    assert (safe.returncode, safe.stderr) == (0, "")


async def test_a_url_check_signature_cannot_carry_a_forged_post(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    # The admin console's URL check signs (token, timestamp, nonce) exactly like a plain-mode
    # POST: the captured check URL must not let a forged message in afterwards.
    async with running_hub(plain_settings(tmp_path, api, model)) as h:
        params, _ = plain.request("")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{h.url}/webhooks/wechat", params={**params, "echostr": "4242"}) as resp:
                assert (resp.status, await resp.text()) == (200, "4242")
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
            async with http.get(f"{h.url}/webhooks/wechat", params={**params, "echostr": "<script>"}) as resp:
                assert resp.status == 400
        answer = await plain.post_raw(h.url, params, text_xml("forged", "9001"))
        assert answer.status == 403
        async with h.hub.db.engine.connect() as conn:
            assert (await conn.execute(select(inbox))).first() is None


async def test_an_unsigned_body_carries_no_admin_rights_outside_admin_either(
    tmp_path: Path, api: FakeWeChatApi, model: FakeOpenAI
) -> None:
    # The allowlist lets admins in; a plain-mode body claiming to be the admin is not one.
    extra = '\n[access]\nprivate = "allowlist"\n'
    settings = plain_settings(tmp_path, api, model, extra=extra)
    async with running_hub(settings) as h:
        await plain.post(h.url, text_xml("hi", "8301", sender=ADMIN))
        await api.wait_sent(1)
        assert "只和白名单上的人聊天" in api.sent()[0]["text"]["content"]
