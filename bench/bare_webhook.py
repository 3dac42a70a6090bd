"""The ceiling the hub is measured against: a bare aiohttp server that acks a Telegram update and
makes one pooled outbound sendMessage POST for it, nothing stored, nothing checked.

Run by `bench/ingest_bench.py --bare` in place of `hub run`, through the same load and the same
fake, so the hub's figures can be read against what this machine and this harness can do at all.

    python bench/bare_webhook.py --config HUB_TOML   (reads api_base and token from it)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tomllib
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web


async def serve(api_base: str, token: str) -> None:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    url = f"{api_base}/bot{token}/sendMessage"
    pending: set[asyncio.Task[None]] = set()

    async def reply(chat_id: int) -> None:
        body = orjson.dumps({"chat_id": chat_id, "text": "help"})
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            await resp.read()

    async def webhook(request: web.Request) -> web.Response:
        update = orjson.loads(await request.read())
        task = asyncio.create_task(reply(update["message"]["chat"]["id"]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/webhooks/telegram", webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"bare webhook listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("run_args", nargs="*", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    telegram = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))["telegram"]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(telegram["api_base"], telegram["token"]))


if __name__ == "__main__":
    main()
