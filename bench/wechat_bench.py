"""How fast WeChat gets its answer, and how long until the reply is pushed, under load.

A real `hub run` process (SQLite, the Official Account channel in safe mode, push replies, one
model) is posted encrypted text messages by a client playing WeChat's servers; the fake WeChat
API and the fake model (which takes `--model-delay-ms` before its first token) run in this
process. For every message the client times its POST to the `success` answer (WeChat gives up
at 5 s, Hub promises 1 s); the fake API times the arrival of the pushed reply. Prints p50,
p99 and max of both, and messages per second.

    python bench/wechat_bench.py [--messages 1000] [--concurrency 50] [--users 100] [--model-delay-ms 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from fake_wechat import APP_ID, APP_SECRET, FakeWeChatApi, WeChatServer, text_xml  # noqa: E402
from harness import HubProcess  # noqa: E402

TOKEN = "bench-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def run(args: argparse.Namespace) -> None:
    model = FakeOpenAI(chunk_chars=8)
    model.first_token_delay_s = args.model_delay_ms / 1000
    api = FakeWeChatApi()
    await model.start()
    await api.start()
    wechat = WeChatServer(TOKEN, AES_KEY)
    with tempfile.TemporaryDirectory(prefix="hub-wechat-bench-") as tmp:
        cfg = Path(tmp) / "hub.toml"
        cfg.write_text(
            f"""data_dir = "{Path(tmp) / "data"}"
[http]
port = 0

[wechat]
enabled = true
app_id = "{APP_ID}"
app_secret = "{APP_SECRET}"
token = "{TOKEN}"
encoding_aes_key = "{AES_KEY}"
api_base = "{api.url}"

[[models]]
name = "bench"
base_url = "{model.base_url}"
api_key = "sk-bench"
model = "fake-chat"
""",
            encoding="utf-8",
        )
        hub = HubProcess(["-m", "hub", "run", "--config", str(cfg)], env={}, cwd=Path(tmp))
        url = await hub.start()
        posted: dict[str, float] = {}
        acks: list[float] = []
        try:
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                queue: asyncio.Queue[int] = asyncio.Queue()
                for n in range(args.messages):
                    queue.put_nowait(n)

                async def worker() -> None:
                    while not queue.empty():
                        n = queue.get_nowait()
                        text = f"question {n}"
                        params, body = wechat.request(text_xml(text, f"{n + 1}", sender=f"user{n % args.users}"))
                        started = time.perf_counter()
                        posted[f"re: {text}"] = started
                        async with http.post(f"{url}/webhooks/wechat", params=params, data=body.encode()) as resp:
                            assert (resp.status, await resp.text()) == (200, "success")
                        acks.append(time.perf_counter() - started)

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                acked = time.perf_counter() - started
                await api.wait_sent(args.messages, timeout=args.messages * args.model_delay_ms / 1000 + 120)
                delivered = time.perf_counter() - started
        finally:
            hub.terminate()
        replies = [
            r.at - posted[r.json["text"]["content"]]
            for r in api.server.calls("/cgi-bin/message/custom/send")
            if getattr(r, "accepted", False)
        ]
        await api.stop()
        await model.stop()
    ms = 1000.0
    print(f"wechat messages: {len(acks)} (concurrency {args.concurrency}, {args.users} users, safe mode, SQLite)")
    print(
        f"answer to WeChat: p50 {percentile(acks, 50) * ms:.1f} ms, p99 {percentile(acks, 99) * ms:.1f} ms, "
        f"max {max(acks) * ms:.1f} ms; {len(acks) / acked:.0f} messages/s"
    )
    print(
        f"reply pushed after (model {args.model_delay_ms:.0f} ms): p50 {percentile(replies, 50) * ms:.0f} ms, "
        f"p99 {percentile(replies, 99) * ms:.0f} ms; all {len(replies)} out in {delivered:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--model-delay-ms", type=float, default=2000.0)
    args = parser.parse_args()
    if args.concurrency < 1 or args.messages < 1 or args.users < 1:
        parser.error("need positive --messages, --concurrency and --users")
    os.environ.pop("HUB_CONFIG", None)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
