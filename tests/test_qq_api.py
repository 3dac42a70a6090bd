"""The delivery API to a QQ chat: nothing to answer yet, so the message is `waiting` until the
user writes, then goes once as the answer to that message. Runs once the delivery API exists."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from fake_qq import USER, FakeQQ, post
from harness import eventually, running_hub
from test_qq import qq_settings

API_TOKEN = "api-token-0123456789"


async def test_a_delivery_api_message_to_qq_waits_for_the_user_then_goes_once(tmp_path: Path) -> None:
    qq = FakeQQ()
    await qq.start()
    try:
        settings = qq_settings(tmp_path, qq, f'[api]\ntoken = "{API_TOKEN}"\n')
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with running_hub(settings) as running, aiohttp.ClientSession(headers=auth) as http:
            body = {"to": f"qq:private:{USER}", "text": "hi from a script"}
            async with http.post(f"{running.url}/api/v1/messages", json=body) as resp:
                assert resp.status == 202, await resp.text()
                item = (await resp.json())["id"]

            async def status_is(expected: str) -> bool:
                async with http.get(f"{running.url}/api/v1/messages/{item}") as resp:
                    return bool((await resp.json())["status"] == expected)

            await eventually(lambda: status_is("waiting"))
            assert qq.sent == []
            hello = qq.c2c("hello")
            await post(running.url, hello)
            await eventually(lambda: status_is("sent"))
            sent = [s for s in qq.sent if s.content == "hi from a script"]
            assert len(sent) == 1 and sent[0].body["msg_id"] == hello["d"]["id"]
    finally:
        await qq.stop()


async def test_hub_send_wait_exits_3_while_the_message_waits_for_the_user(tmp_path: Path) -> None:
    from test_api_process import hub_send

    qq = FakeQQ()
    await qq.start()
    try:
        extra = f'[api]\ntoken = "{API_TOKEN}"\n'
        settings = qq_settings(tmp_path, qq, extra)
        cfg = tmp_path / "send.toml"
        cfg.write_text(extra, encoding="utf-8")
        async with running_hub(settings) as running:
            args = ["--config", str(cfg), "--url", running.url, "--to", f"qq:private:{USER}", "--text", "x"]
            code, out, err = await hub_send(*args, "--wait", "--timeout", "20")
            assert code == 3, (out, err)
            assert out.split()[1] == "waiting" and qq.sent == []
    finally:
        await qq.stop()
