"""Run the real hub with the test platform added: `python tests/fake_hub.py CONFIG API_BASE`.

Used by tests that kill a real hub process. Prints the same "Hub listening" line as `hub run`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiohttp import web
from fakechan import FakeChannel

from hub.app import HUB_KEY, build_app
from hub.config import load_settings
from hub.logs import setup_logging
from hub.routing.context import Context


async def main(config: str, api_base: str) -> None:
    setup_logging("info")
    settings = load_settings(config)
    channel = FakeChannel(api_base)
    app = build_app(settings, extra_channels=[channel], lease_s=3.0, recovery_interval_s=1.0)
    hub = app[HUB_KEY]
    channel.bind(hub.dispatcher)
    slow_s = float(os.environ.get("FAKE_SLOW_S", "0"))

    async def slow(ctx: Context) -> None:
        # A skill that takes its time: lets a test kill the process mid-handling.
        await asyncio.sleep(slow_s)
        await ctx.reply(f"slow done: {ctx.args}")

    hub.router.register("slow", slow, description="answer after FAKE_SLOW_S seconds")
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"Hub listening on http://127.0.0.1:{port}/", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
