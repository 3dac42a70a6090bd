"""The QQ channel end to end: signed webhooks in over real HTTP, passive replies out to a fake
QQ API (token host and bot API), the rows in the database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from fake_providers import FakeHunyuan
from fake_qq import APP_ID, APP_SECRET, GROUP, USER, FakeQQ, post, signed_headers
from harness import RunningHub, eventually, make_settings, running_hub
from jobs_helpers import job_ref, providers_toml
from sqlalchemy import func, select, update

from hub.settings import Settings
from hub.storage.db import utcnow
from hub.storage.models import inbox, reply_slots

PUBLIC = "https://hub.example.com"


def qq_settings(tmp_path: Path, qq: FakeQQ, extra: str = "", *, secret: str = APP_SECRET) -> Settings:
    return make_settings(
        tmp_path,
        f"""
[qq]
enabled = true
app_id = "{APP_ID}"
app_secret = "{secret}"
api_base = "{qq.api.url}"
token_base = "{qq.tokens.url}"
{extra}
""",
    )


@pytest.fixture
async def qq() -> AsyncIterator[FakeQQ]:
    fake = FakeQQ()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hub(tmp_path: Path, qq: FakeQQ) -> AsyncIterator[RunningHub]:
    async with running_hub(qq_settings(tmp_path, qq)) as running:
        yield running


async def inbox_count(hub: RunningHub) -> int:
    async with hub.hub.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(inbox))).scalar_one())


async def test_c2c_message_is_answered_once_with_msg_id_and_seq(hub: RunningHub, qq: FakeQQ) -> None:
    payload = qq.c2c("hello")
    status, answer = await post(hub.url, payload)
    assert (status, answer) == (200, {"op": 12, "d": 0})
    await qq.api.wait_for(lambda: len(qq.sent) >= 1)
    reply = qq.sent[0]
    assert reply.chat == f"private:{USER}"
    assert reply.body["msg_id"] == payload["d"]["id"]
    assert reply.body["msg_seq"] == 1 and reply.body["msg_type"] == 0
    assert "model" in reply.content.lower()  # no model configured: the notice says so
    auth = qq.api.calls(f"/v2/users/{USER}/messages")[0].headers["Authorization"]
    assert auth.startswith("QQBot ") and auth[6:] in qq.valid_tokens
    await asyncio.sleep(0.3)
    assert len(qq.sent) == 1 and not qq.refused


async def test_group_at_message_is_answered_in_the_group(hub: RunningHub, qq: FakeQQ) -> None:
    payload = qq.group_at(" /help")
    status, _ = await post(hub.url, payload)
    assert status == 200
    await qq.api.wait_for(lambda: len(qq.sent) >= 1)
    reply = qq.sent[0]
    assert reply.chat == f"group:{GROUP}"
    assert reply.body["msg_id"] == payload["d"]["id"] and reply.body["msg_seq"] == 1
    assert "/video" in reply.content
    rows = await hub.hub.outbox_repo.all_rows()
    assert [r["target"] for r in rows] == [f"qq:group:{GROUP}"]


async def test_the_same_event_three_times_is_answered_once(hub: RunningHub, qq: FakeQQ) -> None:
    payload = qq.c2c("once please")
    answers = await asyncio.gather(*(post(hub.url, payload) for _ in range(3)))
    assert all(a == (200, {"op": 12, "d": 0}) for a in answers)
    await post(hub.url, payload)
    await qq.api.wait_for(lambda: len(qq.sent) >= 1)
    await asyncio.sleep(0.5)
    assert len(qq.sent) == 1
    assert await inbox_count(hub) == 1


async def test_token_is_fetched_once_and_reused(hub: RunningHub, qq: FakeQQ) -> None:
    for n in range(3):
        await post(hub.url, qq.c2c(f"message {n}"))
    await qq.api.wait_for(lambda: len(qq.sent) >= 3)
    assert qq.token_fetches() == 1
    body = qq.tokens.calls("/app/getAppAccessToken")[0].json
    assert body == {"appId": APP_ID, "clientSecret": APP_SECRET}


async def test_url_check_is_answered_with_the_reference_signature(tmp_path: Path, qq: FakeQQ) -> None:
    # REFERENCE.md's op 13 vector, literally: secret, event_ts, plain_token and signature.
    settings = qq_settings(tmp_path, qq, secret="DG5g3B4j9X2KOErG")
    check = {"op": 13, "d": {"plain_token": "Arq0D5A61EgUu4OxUvOp", "event_ts": "1725442341"}}
    body = json.dumps(check).encode()
    async with running_hub(settings) as running:
        status, answer = await post(
            running.url, body, sign=False, headers=signed_headers(body, secret="DG5g3B4j9X2KOErG")
        )
        assert status == 200
        assert answer == {
            "plain_token": "Arq0D5A61EgUu4OxUvOp",
            "signature": "87befc99c42c651b3aac0278e71ada338433ae26fcb24307bdc5ad38c1adc2d0"
            "1bcfcadc0842edac85e85205028a1132afe09280305f13aa6909ffc2d652c706",
        }
        # The same check signed with the bot's other secret is refused: nothing is signed.
        status, answer = await post(running.url, body)
        assert status == 403 and "signature" not in answer


async def test_forged_and_unsigned_requests_are_refused_and_not_processed(hub: RunningHub, qq: FakeQQ) -> None:
    check = {"op": 13, "d": {"plain_token": "forged", "event_ts": "1725442341"}}
    message = qq.c2c("forged hello")
    for payload in (check, message):
        body = json.dumps(payload).encode()
        # Unsigned.
        status, answer = await post(hub.url, body, sign=False)
        assert status == 401 and "signature" not in json.dumps(answer)
        # Signed with another secret.
        status, answer = await post(hub.url, body, sign=False, headers=signed_headers(body, secret="not-the-secret"))
        assert status == 403 and "plain_token" not in json.dumps(answer)
        # A real signature of another body.
        other = signed_headers(b'{"op": 0}')
        status, _ = await post(hub.url, body, sign=False, headers=other)
        assert status == 403
        # A real signature over another timestamp.
        headers = signed_headers(body)
        headers["X-Signature-Timestamp"] = str(int(headers["X-Signature-Timestamp"]) + 1)
        status, _ = await post(hub.url, body, sign=False, headers=headers)
        assert status == 403
        # Garbage in the signature header.
        status, _ = await post(hub.url, body, sign=False, headers={**signed_headers(body), "X-Signature-Ed25519": "zz"})
        assert status == 403
    await asyncio.sleep(0.3)
    assert await inbox_count(hub) == 0
    assert qq.sent == [] and qq.api.requests == []


# --- long jobs: a result after the window waits for the user's next message ------------------


@pytest.fixture
async def hunyuan() -> AsyncIterator[FakeHunyuan]:
    # Running until the test says it is done: the window closes first, whatever the machine's pace.
    fake = FakeHunyuan(queued_s=0.05, running_s=3600)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def job_hub(tmp_path: Path, qq: FakeQQ, hunyuan: FakeHunyuan) -> AsyncIterator[RunningHub]:
    settings = qq_settings(tmp_path, qq, f'[http]\npublic_url = "{PUBLIC}"\n' + providers_toml(hunyuan=hunyuan.url))
    async with running_hub(settings) as running:
        qq.resolve[PUBLIC] = running.url
        yield running


async def close_windows(hub: RunningHub, qq: FakeQQ) -> None:
    """Time passes: every message delivered so far is past its reply window, at QQ and in the hub."""
    for msg_id, (chat, at) in list(qq.delivered.items()):
        qq.delivered[msg_id] = (chat, at - 7200)
    async with hub.hub.db.engine.begin() as conn:
        await conn.execute(update(reply_slots).values(closes_at=utcnow() - timedelta(seconds=1)))


async def outbox_status(hub: RunningHub, key: str) -> str | None:
    return (await hub.hub.outbox_repo.statuses([key])).get(key)


async def test_a_video_after_the_window_goes_with_the_next_message_once(
    job_hub: RunningHub, qq: FakeQQ, hunyuan: FakeHunyuan
) -> None:
    chat = f"private:{USER}"
    await post(job_hub.url, qq.c2c("/video a piglet singing"))
    await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 1)
    first = qq.replies(chat)[0].content
    assert "queued as #" in first and "when it is ready, send me any message to receive it" in first
    job_id = job_ref(first)
    await close_windows(job_hub, qq)
    hunyuan.running_s = 0  # the video is done, long after the window
    key = f"job:{job_id}:result"
    await eventually(lambda: outbox_status(job_hub, key), timeout=20)
    await eventually(lambda: _is(outbox_status(job_hub, key), "waiting"), timeout=20)
    assert len(qq.replies(chat)) == 1 and not qq.refused  # nothing tried on an expired msg_id

    nxt = qq.c2c("thanks")
    await post(job_hub.url, nxt)
    await qq.api.wait_for(lambda: any(s.body.get("msg_type") == 7 for s in qq.replies(chat)), timeout=20)
    await eventually(lambda: _is(outbox_status(job_hub, key), "sent"))
    videos = [s for s in qq.replies(chat) if s.body.get("msg_type") == 7]
    assert len(videos) == 1
    assert videos[0].body["msg_id"] == nxt["d"]["id"]
    assert qq.files[videos[0].body["media"]["file_info"]].startswith(f"{PUBLIC}/media/")
    upload = qq.api.calls(f"/v2/users/{USER}/files")[0].json
    assert upload["file_type"] == 2 and upload["srv_send_msg"] is False
    # Later messages get their own answers, never the video again.
    await post(job_hub.url, qq.c2c("hello again"))
    await qq.api.wait_for(lambda: len(qq.replies(chat)) >= 4)
    await asyncio.sleep(0.3)
    assert len([s for s in qq.replies(chat) if s.body.get("msg_type") == 7]) == 1
    seqs = [(s.body["msg_id"], s.body["msg_seq"]) for s in qq.replies(chat)]
    assert len(set(seqs)) == len(seqs) and not qq.refused


async def _is(value: object, expected: str) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return value == expected
