"""The hub's own overhead on a streamed chat reply, through the web chat.

A real `hub run` process (SQLite, web chat, one model) talks to the tests' fake
OpenAI-compatible server, which runs in this process beside the client. For every reply the
client times its POST to the first `content` chunk of the SSE answer; the fake model times the
request's arrival to its first chunk written. The difference is what the hub adds before the
first token reaches the user: the inbox commit, routing, persona and memory reads, the model
client, and the SSE write. Prints p50 and p99 over the replies (after a warm-up), and the
CPU the hub process spent per reply: on a machine shared with other work the latencies wait
for a free core, the CPU time does not.

    python bench/chat_bench.py [--replies 500] [--concurrency 1] [--sessions 20] [--model-delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from harness import HubProcess  # noqa: E402


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU of a process so far (Linux), None where /proc does not tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def one_reply(http: aiohttp.ClientSession, url: str, session: str, text: str) -> tuple[float, float]:
    """(seconds to the first content chunk, seconds to [DONE]) for one message."""
    started = time.perf_counter()
    first: float | None = None
    async with http.post(f"{url}/api/web/chat", json={"session": session, "text": text}) as resp:
        resp.raise_for_status()
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                if not block.startswith(b"data: "):
                    continue
                data = block[6:]
                if data == b"[DONE]":
                    assert first is not None, "no content before [DONE]"
                    return first, time.perf_counter() - started
                if first is None and "content" in json.loads(data):
                    first = time.perf_counter() - started
    raise AssertionError("the answer ended without [DONE]")


async def run(args: argparse.Namespace) -> None:
    model = FakeOpenAI(chunk_chars=4)
    model.first_token_delay_s = args.model_delay_ms / 1000
    await model.start()
    with tempfile.TemporaryDirectory(prefix="hub-chat-bench-") as tmp:
        cfg = Path(tmp) / "hub.toml"
        cfg.write_text(
            f"""data_dir = "{Path(tmp) / "data"}"
[http]
port = 0

[[models]]
name = "bench"
base_url = "{model.base_url}"
api_key = "sk-bench"
model = "fake-chat"
context_length = 8192

[[personas]]
name = "Bench"
personality = "brief"
greeting = "Hi."
language = "en"
default = true
""",
            encoding="utf-8",
        )
        hub = HubProcess(["-m", "hub", "run", "--config", str(cfg)], env={}, cwd=Path(tmp))
        url = await hub.start()
        try:
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                counter = iter(range(10**9))
                ttft: list[float] = []
                total: list[float] = []
                overhead: list[float] = []

                async def worker(count: int, measured: bool) -> None:
                    for _ in range(count):
                        n = next(counter)
                        text = f"message {n}: how are you today?"
                        first, whole = await one_reply(http, url, f"s{n % args.sessions}", text)
                        if measured:
                            ttft.append(first)
                            total.append(whole)
                            overhead.append(first - model.first_token_for[text])

                warmup = max(args.concurrency, 20)
                await asyncio.gather(*(worker(warmup // args.concurrency, False) for _ in range(args.concurrency)))
                # This process imported the hub too (the harness): its own collector's full
                # passes over that would land in the measured overhead.
                gc.collect()
                gc.freeze()
                assert hub.proc is not None
                cpu_before = cpu_seconds(hub.proc.pid)
                started = time.perf_counter()
                per = args.replies // args.concurrency
                await asyncio.gather(*(worker(per, True) for _ in range(args.concurrency)))
                elapsed = time.perf_counter() - started
                cpu_after = cpu_seconds(hub.proc.pid)
        finally:
            hub.terminate()
            await model.stop()
    model_first = [ttft[i] - overhead[i] for i in range(len(ttft))]
    ms = 1000.0
    print(f"chat replies: {len(overhead)} (concurrency {args.concurrency}, {args.sessions} sessions, SQLite)")
    p50, p99 = percentile(overhead, 50) * ms, percentile(overhead, 99) * ms
    print(f"hub overhead to first token: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"  mean {statistics.fmean(overhead) * ms:.2f} ms, max {max(overhead) * ms:.2f} ms")
    print(f"client time to first token: p50 {percentile(ttft, 50) * ms:.2f} ms, p99 {percentile(ttft, 99) * ms:.2f} ms")
    print(f"fake model time to first token: p50 {percentile(model_first, 50) * ms:.2f} ms")
    print(f"whole reply: p50 {percentile(total, 50) * ms:.2f} ms; {len(overhead) / elapsed:.0f} replies/s")
    if cpu_before is not None and cpu_after is not None:
        print(f"hub CPU per reply: {(cpu_after - cpu_before) / len(overhead) * ms:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--model-delay-ms", type=float, default=0.0, help="the fake model's own time to first token")
    args = parser.parse_args()
    if args.concurrency < 1 or args.replies < args.concurrency:
        parser.error("need 1 <= concurrency <= replies")
    os.environ.pop("HUB_CONFIG", None)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
