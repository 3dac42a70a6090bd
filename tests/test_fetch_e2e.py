"""The private-address guard end to end: a provider's result URL and a reply's media URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from fake_telegram import FakeTelegram, error, message_update, post_update, telegram_toml
from harness import FakeServer, Recorded, RunningHub, eventually, make_settings, running_hub, text_of, web_chat
from jobs_helpers import EventStream, has_media, has_text, job_ref, providers_toml
from yarl import URL

from hub.channels.base import SendRequest
from hub.channels.parts import Part
from hub.channels.uploads import MediaPreparer
from hub.channels.wechat.api import WeChatApi
from hub.errors import SendError
from hub.events import ChatRef, Image, Message
from hub.fetch import Fetcher, FetchPolicy
from hub.routing.context import Context

VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"v" * 500


@pytest.fixture
async def inside() -> AsyncIterator[FakeServer]:
    """A service on the hub's own machine that the configuration does not name."""
    server = FakeServer()
    server.on("GET", "/files/x.mp4", lambda rec: web.Response(body=VIDEO, content_type="video/mp4"))
    server.on("GET", "/x.png", lambda rec: web.Response(body=b"\x89PNG....", content_type="image/png"))
    await server.start()
    yield server
    await server.stop()


class VideoProvider:
    """A Hunyuan-shaped provider whose finished job points wherever `result_url` says."""

    def __init__(self) -> None:
        self.server = FakeServer()
        self.result_url = ""
        self.server.on("POST", "/v1/api/video/submit", lambda rec: {"id": "42", "status": "queued"})
        self.server.on("POST", "/v1/api/video/query", self._query)
        self.server.on("GET", "/files/own.mp4", lambda rec: web.Response(body=VIDEO, content_type="video/mp4"))

    def _query(self, rec: Recorded) -> dict[str, object]:
        return {"id": "42", "status": "completed", "progress": 100, "data": {"url": self.result_url}}

    def redirect(self, path: str, location: str) -> None:
        self.server.on("GET", path, lambda rec: web.Response(status=302, headers={"Location": location}))


@pytest.fixture
async def provider() -> AsyncIterator[VideoProvider]:
    fake = VideoProvider()
    await fake.server.start()
    yield fake
    await fake.server.stop()


async def failed_video(h: RunningHub, session: str) -> tuple[str, str]:
    """Ask for a video; return the job id and what the user was told about it."""
    async with EventStream(h.url, session) as events:
        job_id = job_ref(text_of(await web_chat(h.url, session, "/video a cat")))
        told = await events.until(has_text("failed"))
    return job_id, text_of(told)


async def test_a_result_url_on_another_local_port_fails_the_job_and_is_never_fetched(
    tmp_path: Path, provider: VideoProvider, inside: FakeServer
) -> None:
    provider.result_url = f"{inside.url}/files/x.mp4"
    async with running_hub(make_settings(tmp_path, providers_toml(hunyuan=provider.server.url))) as h:
        job_id, told = await failed_video(h, "s1")
        port = URL(inside.url).port
        assert told.startswith(f"Sorry, your video #{job_id} failed: the result could not be downloaded")
        assert f"127.0.0.1:{port}: a loopback address" in told
        job = await h.hub.jobs.get(job_id)
        assert job is not None and job.state == "failed" and "refused" in (job.error or "")
        assert job.attempts == 0  # final at once: a refusal is not retried
    assert inside.requests == []


async def test_a_redirect_from_the_provider_to_a_private_address_is_refused(
    tmp_path: Path, provider: VideoProvider, inside: FakeServer
) -> None:
    provider.redirect("/files/moved.mp4", f"{inside.url}/files/x.mp4")
    provider.result_url = f"{provider.server.url}/files/moved.mp4"
    async with running_hub(make_settings(tmp_path, providers_toml(hunyuan=provider.server.url))) as h:
        _, told = await failed_video(h, "s2")
        assert f"127.0.0.1:{URL(inside.url).port}: a loopback address" in told
    assert provider.server.calls("/files/moved.mp4")  # the configured host was asked
    assert inside.requests == []  # the address it pointed to was not


async def test_the_providers_own_host_and_fetch_allow_are_fetched(
    tmp_path: Path, provider: VideoProvider, inside: FakeServer
) -> None:
    provider.redirect("/files/moved.mp4", f"{provider.server.url}/files/own.mp4")
    provider.result_url = f"{provider.server.url}/files/moved.mp4"
    async with running_hub(make_settings(tmp_path, providers_toml(hunyuan=provider.server.url))) as h:
        async with EventStream(h.url, "s3") as events:
            await web_chat(h.url, "s3", "/video a cat")
            await events.until(has_media("video"))
    provider.result_url = f"{inside.url}/files/x.mp4"
    toml = '[http]\nfetch_allow = ["127.0.0.0/8"]\n' + providers_toml(hunyuan=provider.server.url)
    (tmp_path / "allowed").mkdir()
    async with running_hub(make_settings(tmp_path / "allowed", toml)) as h:
        async with EventStream(h.url, "s4") as events:
            await web_chat(h.url, "s4", "/video a cat")
            await events.until(has_media("video"))
    assert len(inside.calls("/files/x.mp4")) == 1


async def test_a_reply_media_url_to_a_local_service_fails_the_send_for_good(tmp_path: Path, inside: FakeServer) -> None:
    tg = FakeTelegram()
    await tg.start()
    try:
        async with running_hub(make_settings(tmp_path, telegram_toml(tg.url))) as h:

            async def skill(ctx: Context) -> None:
                await ctx.reply(Message.of(Image(url=f"{inside.url}/x.png")))

            h.hub.router.register("media", skill, description="answer with media")
            # Telegram cannot reach the URL, so the hub would download it itself: refused.
            tg.script("sendPhoto", error(400, "Bad Request: wrong file identifier/HTTP URL specified"))
            await post_update(h.url, message_update("/media"))

            async def failed() -> bool:
                rows = await h.hub.outbox_repo.all_rows()
                return bool(rows) and rows[0]["status"] == "failed"

            await eventually(failed, timeout=20)
            (row,) = await h.hub.outbox_repo.all_rows()
            assert row["attempts"] == 1
            assert "a loopback address" in row["last_error"]
    finally:
        await tg.stop()
    assert inside.requests == []


async def test_wechat_media_from_a_local_service_is_refused_for_good(inside: FakeServer) -> None:
    to_wechat = SendRequest(ChatRef("wechat", "private", "o1"), Message.of("x"))
    fetcher = Fetcher(FetchPolicy.of(["http://127.0.0.1:1"]))  # api_base: another port
    preparer = MediaPreparer(
        WeChatApi("http://127.0.0.1:1", "/cgi-bin/token", {}),
        None,  # type: ignore[arg-type]  # no link is made: the download is refused first
        None,
        limits={"image": 10 * 1024 * 1024},
        voice_formats=frozenset(),
        fetcher=fetcher,
    )
    try:
        with pytest.raises(SendError, match="a loopback address") as caught:
            await preparer.prepare(Part("image", media=Image(url=f"{inside.url}/x.png")), to_wechat)
    finally:
        await fetcher.close()
    assert not caught.value.retryable
    assert inside.requests == []
