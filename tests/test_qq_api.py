"""The delivery API to a QQ chat: nothing to answer yet, so the message is `waiting` until the
user writes, then goes once as the answer to that message. Runs once the delivery API exists."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from fake_qq import USER, FakeQQ, post
from harness import eventually, running_hub
from test_qq import qq_settings

pytest.importorskip("hub.api")

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
