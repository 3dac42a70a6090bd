"""The web chat's door (token, Host, Origin, content type), /metrics and /media headers, and a
streamed answer cut off by a reload reaching the page again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fake_openai import FakeOpenAI
from harness import eventually, make_settings, running_hub, sse_items, text_of, web_chat
from test_config import check_config, mistakes

from hub.events import ChatRef, File, Image, Message
from hub.storage.outbox import NewMessage

TOKEN = "s3cret-web-token"
GUARDED = f'[web]\ntoken = "{TOKEN}"\n'


async def post_chat(url: str, body: bytes | str, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/web/chat", data=body, headers=headers) as resp:
            return resp.status, await resp.text()


def chat_body(session: str = "s1", text: str = "/help") -> str:
    return json.dumps({"session": session, "text": text})


JSON = {"Content-Type": "application/json"}


async def test_the_token_scheme_is_read_in_any_case(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path, GUARDED)) as h:
        for scheme in ("Bearer", "bearer", "BEARER"):
            status, text = await post_chat(h.url, chat_body(), {**JSON, "Authorization": f"{scheme} {TOKEN}"})
            assert status == 200 and "Commands" in text, (scheme, status)
        for wrong in (f"Basic {TOKEN}", "Bearer nope", f"Bearer {TOKEN}x", "Bearer ẞ", TOKEN):
            status, _ = await post_chat(h.url, chat_body(), {**JSON, "Authorization": wrong})
            assert status == 401, wrong


async def test_a_body_that_is_not_json_gets_415(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            status, _ = await post_chat(h.url, chat_body(), {"Content-Type": ctype})
            assert status == 415, ctype
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{h.url}/api/web/events", params={"session": "s1"}) as resp:
                assert resp.status == 200  # a GET has no body to check


async def test_a_message_to_a_stopping_hub_gets_503(tmp_path: Path) -> None:
    # Nothing was written before the refusal: it has its own status, for the page to show.
    async with running_hub(make_settings(tmp_path)) as h:
        await h.hub.dispatcher.stop()
        status, text = await post_chat(h.url, chat_body(), JSON)
        assert status == 503 and "shutting down" in json.loads(text)["error"]


async def test_an_origin_that_is_not_the_hubs_gets_403(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, '[http]\npublic_url = "http://127.0.0.1:9"\n')
    async with running_hub(settings) as h:
        host = h.url.removeprefix("http://")
        for origin in ("https://evil.example", "null", f"http://{host}.evil.example"):
            status, _ = await post_chat(h.url, chat_body(), {**JSON, "Origin": origin})
            assert status == 403, origin
        for origin in (h.url, f"https://{host}", "http://127.0.0.1:9"):
            status, text = await post_chat(h.url, chat_body(), {**JSON, "Origin": origin})
            assert status == 200 and "Commands" in text, origin


async def test_without_a_token_only_the_hubs_own_host_names_reach_the_page(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, '[http]\npublic_url = "http://localhost:9"\n')
    async with running_hub(settings) as h:
        port = h.url.rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as http:

            async def status(path: str, host: str, method: str = "GET") -> int:
                body = chat_body() if method == "POST" else None
                async with http.request(method, f"{h.url}{path}", data=body, headers={**JSON, "Host": host}) as resp:
                    if resp.status == 200 and path.startswith("/api/web/events"):
                        return 200  # an open stream: seen enough
                    await resp.read()
                    return resp.status

            for path, method in (
                ("/", "GET"),
                ("/api/web/chat", "POST"),
                ("/api/web/events?session=s1", "GET"),
                ("/api/web/labels?session=s1", "GET"),
            ):
                # DNS rebinding: a stranger's name that resolves to 127.0.0.1.
                assert await status(path, f"evil.example:{port}", method) == 421, path
                assert await status(path, "evil.example", method) == 421, path
                for ours in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost:9"):
                    assert await status(path, ours, method) == 200, (path, ours)
            # Wrong port on a loopback name: not this hub.
            assert await status("/", f"127.0.0.1:{int(port) + 1}") == 421
            # Paths platforms reach never check the Host.
            assert await status("/healthz", "evil.example") == 200
            assert await status("/media/00", "evil.example") == 404


async def test_a_token_makes_the_host_check_unneeded(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path, GUARDED)) as h:
        headers = {**JSON, "Authorization": f"Bearer {TOKEN}", "Host": "chat.example.org"}
        status, text = await post_chat(h.url, chat_body(), headers)
        assert status == 200 and "Commands" in text


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("", {}, None),  # loopback, no public URL: open
        (GUARDED + '[http]\npublic_url = "https://bot.example.com"\n', {}, TOKEN),
        (GUARDED + '[http]\npublic_url = "https://bot.example.com"\nmetrics_token = "m-tok"\n', {}, "m-tok"),
        ('[http]\nmetrics_token = "m-tok"\n', {}, "m-tok"),
    ],
)
async def test_metrics_needs_its_token_or_the_web_token_when_that_is_required(
    tmp_path: Path, toml: str, env: dict[str, str], expected: str | None
) -> None:
    async with running_hub(make_settings(tmp_path, toml, **env)) as h, aiohttp.ClientSession() as http:

        async def status(auth: str | None) -> int:
            headers = {"Authorization": auth} if auth else {}
            async with http.get(f"{h.url}/metrics", headers=headers) as resp:
                await resp.read()
                return resp.status

        if expected is None:
            assert await status(None) == 200
            return
        assert await status(None) == 401
        assert await status("Bearer wrong") == 401
        assert await status(f"bearer {expected}") == 200
        if expected != TOKEN and TOKEN in toml:
            assert await status(f"Bearer {TOKEN}") == 401  # the metrics token replaces the web token


async def media_response(url: str, media_url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}{media_url}", headers={"Host": "anything.example"}) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_media_is_inline_only_as_the_kind_asked_for_and_never_sniffed(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        store = h.hub.media
        html = b"<script>alert(document.domain)</script>"
        cases = [
            (await store.save_bytes(b"\x89PNG", name="a.png", mime="image/png", kind="image"), "image/png"),
            (await store.save_bytes(b"ID3", mime="audio/mpeg", kind="audio"), "audio/mpeg"),
            (await store.save_bytes(html, name="x.png", mime="text/html", kind="image"), None),  # a provider's lie
            (await store.save_bytes(html, mime="image/svg+xml", kind="image"), None),
            (await store.save_bytes(b"mp4", mime="video/mp4", kind="image"), None),  # not what was asked
            (await store.save_bytes(html, name="page.html", kind="file"), None),
            (await store.save_bytes(b"\x89PNG", mime="image/png"), None),  # no kind recorded
        ]
        for stored, inline in cases:
            status, headers, _body = await media_response(h.url, f"/media/{stored.id}")
            assert status == 200
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Content-Security-Policy"] == "sandbox"
            if inline is None:
                assert headers["Content-Type"] == "application/octet-stream", stored
                assert headers["Content-Disposition"].startswith("attachment"), stored
            else:
                assert headers["Content-Type"] == inline
                assert headers["Content-Disposition"].startswith("inline")


async def test_an_image_sent_to_the_web_chat_is_shown_inline_and_a_file_is_not(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        later = Message.of(
            Image(data=b"\x89PNG", mime="image/png", name="p.png"), File(data=b"<b>x</b>", mime="text/html")
        )
        await h.hub.outbox.put(NewMessage(ChatRef("web", "private", "s9"), later))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{h.url}/api/web/events", params={"session": "s9"}) as resp:
                items = await sse_items(resp, timeout=10)
        urls = [i["media"]["url"] for i in items if isinstance(i, dict) and "media" in i]
        image, file = [await media_response(h.url, u) for u in urls]
        assert image[1]["Content-Type"] == "image/png"
        assert file[1]["Content-Type"] == "application/octet-stream"


# --- a live answer cut off by a reload ------------------------------------------------------


@pytest.fixture
async def slow_model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(answer=lambda _m: "one two three four five six seven eight nine ten", chunk_chars=4)
    fake.chunk_delay_s = 0.05
    await fake.start()
    yield fake
    await fake.stop()


async def test_a_stream_cut_off_by_a_reload_is_finished_through_the_event_stream(
    tmp_path: Path, slow_model: FakeOpenAI
) -> None:
    toml = f"""
[[models]]
name = "main"
base_url = "{slow_model.base_url}"
api_key = "sk-test"
model = "fake-chat"
"""
    async with running_hub(make_settings(tmp_path, toml)) as h:
        async with aiohttp.ClientSession() as http:
            # The page before the reload: its event stream and a question being answered.
            events = await http.get(f"{h.url}/api/web/events", params={"session": "rl"})
            assert b"connected" in await asyncio.wait_for(events.content.readany(), timeout=10)
            resp = await http.post(f"{h.url}/api/web/chat", json={"session": "rl", "text": "hello"})
            assert resp.status == 200
            assert b"content" in await asyncio.wait_for(resp.content.readany(), timeout=10)
            events.close()  # the page reloads mid-answer: both its streams go
            resp.close()

        async def queued() -> bool:
            rows = await h.hub.outbox_repo.all_rows()
            return any(r["target"] == "web:private:rl" and r["status"] == "sent" for r in rows)

        await eventually(queued)
        # The reloaded page's event stream gets the whole answer.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{h.url}/api/web/events", params={"session": "rl"}) as again:
                items = await sse_items(again, timeout=10)
        assert text_of(items) == "one two three four five six seven eight nine ten"


# --- check-config and the command line --------------------------------------------------------


@pytest.mark.parametrize(
    "http",
    [
        '[http]\nhost = "0.0.0.0"\n',
        '[http]\npublic_url = "https://bot.example.com"\n',  # a reverse proxy in front of 127.0.0.1
        '[http]\npublic_url = "http://10.0.0.5:8080"\n',
    ],
)
def test_a_web_chat_reachable_from_outside_needs_its_token(tmp_path: Path, http: str) -> None:
    done = check_config(tmp_path, http)
    assert done.returncode == 2
    assert "required when" in mistakes(done)["web.token"]
    assert check_config(tmp_path, http + GUARDED).returncode == 0
    assert check_config(tmp_path, http + "[web]\nenabled = false\n").returncode == 0


def test_a_loopback_public_url_needs_no_token(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"):
        assert check_config(tmp_path, f'[http]\npublic_url = "{url}"\n').returncode == 0, url


def test_web_users_are_never_admins_by_name(tmp_path: Path) -> None:
    done = check_config(tmp_path, 'admins = ["telegram:1", "web:owner"]\n[web]\ntoken_is_admin = true\n')
    assert done.returncode == 2
    found = mistakes(done)
    assert set(found) == {"admins.1", "web.token_is_admin"}  # every mistake in one round
    assert "token_is_admin" in found["admins.1"]
    assert check_config(tmp_path, 'admins = ["telegram:1"]\n' + GUARDED + "token_is_admin = true\n").returncode == 0


def test_the_command_line_refuses_a_web_admin(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    args = [sys.executable, "-m", "hub", "admin", "add", "web:owner", "--config", str(cfg)]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "web:owner" in done.stderr and "token_is_admin" in done.stderr
    assert "is now an admin" not in done.stdout


async def test_a_stored_web_admin_row_counts_for_nothing(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        await h.hub.users.set("web:owner", is_admin=True, banned=False)  # an older version's row
        h.hub.people.invalidate()
        assert "admins only" in text_of(await web_chat(h.url, "owner", "/admin status"))


async def test_the_web_token_makes_an_admin_only_under_token_is_admin(tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_hub(make_settings(tmp_path, GUARDED)) as h:
        assert "admins only" in text_of(await web_chat(h.url, "anyone", "/admin status", headers=auth))
    async with running_hub(make_settings(tmp_path, GUARDED + "token_is_admin = true\n")) as h:
        assert "Channels:" in text_of(await web_chat(h.url, "anyone", "/admin status", headers=auth))
        # The flag comes from the token, never from what the body says.
        status, _ = await post_chat(h.url, json.dumps({"session": "x", "text": "/admin status"}), JSON)
        assert status == 401


async def test_the_pages_labels_follow_the_pages_token_and_origin_rules(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path, GUARDED)) as h, aiohttp.ClientSession() as http:
        url = f"{h.url}/api/web/labels"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for headers, expected in (
            ({}, 401),
            ({"Authorization": "Bearer nope"}, 401),
            ({**auth, "Origin": "http://evil.example"}, 403),
            (auth, 200),
            ({**auth, "Origin": h.url}, 200),
        ):
            async with http.get(url, params={"session": "s1"}, headers=headers) as resp:
                assert resp.status == expected, headers
        async with http.get(url, params={"session": "no spaces"}, headers=auth) as resp:
            assert resp.status == 400


async def test_another_sites_page_cannot_drain_a_sessions_event_stream(tmp_path: Path) -> None:
    async with running_hub(make_settings(tmp_path)) as h:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{h.url}/api/web/events", params={"session": "s1"}, headers={"Origin": "http://evil.example"}
            ) as resp:
                assert resp.status == 403
