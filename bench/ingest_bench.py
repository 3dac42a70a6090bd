"""Telegram webhook ingest: ack latency at a steady rate, and saturated throughput in → out.

Three processes on this machine: a real `hub run` (SQLite, Telegram in webhook mode), the fakes
(the tests' fake Bot API, counting calls, and a minimal OpenAI-compatible streaming model), and
this process, which POSTs signed updates to the hub's webhook. Two workloads:

- `/help` in private chats: a command answered without a model (one sendMessage per update);
- plain text through the fake model (`[[models]]` configured): the chat skill streams the
  model's answer, which reaches Telegram as one sendMessage (an answer complete within a
  second is not edit-streamed).

For each: the ack latency p50/p99 at a steady `--rate` (open loop: update i is sent at
t0 + i/rate whatever came before), then `--burst` updates as fast as `--concurrency`
connections take them: the ack rate, and updates in → replies out at the fake per second
(from the first POST to the last reply counted at the fake).

    python bench/ingest_bench.py [--rate 500] [--steady-s 10] [--burst 10000] [--concurrency 64]
                                 [--chats 1000] [--only help|text] [--profile DIR]
                                 [--pg [DSN]] [--workers N] [--bare]

`--pg` runs the hub on a fresh database of the local PostgreSQL (or DSN); with `--workers 2`
the throughput of the pair can be set against one process on the same database, and the
machine's CPU use during the burst is printed too. `--bare` runs the same load against
`bench/bare_webhook.py` (ack, then one pooled sendMessage POST, nothing stored): the ceiling of
this machine and this harness, to read the hub's figures against.

Goals (issue 5): ack p99 ≤ 20 ms at 500 updates/s; ≥ 2,000 updates/s in → out on one process.
Each burst also reports the hub's own CPU time per update (all its threads, from /proc), which
says what one core can carry whatever else the machine runs. `--profile DIR` records the hub
with py-spy during the bursts (`pip install -e .[bench]`), as collapsed stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_telegram import SECRET, TOKEN, FakeTelegram  # noqa: E402
from harness import HubProcess  # noqa: E402

MODEL_PIECES = ("Hello", " there", ", nice", " to meet", " you", ".")


# --- the fakes' process ----------------------------------------------------------------------


def _chunk(delta: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake-chat",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _completions(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(_chunk({"role": "assistant", "content": ""}))
    for piece in MODEL_PIECES:
        await resp.write(_chunk({"content": piece}))
    await resp.write(_chunk(None, {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}))
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def serve_fakes() -> None:
    telegram = FakeTelegram(record=False)
    tg_url = await telegram.start()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    model_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]
    print(f"fakes {tg_url} {model_url}", flush=True)
    await asyncio.Event().wait()


# --- the load -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children so far (Linux /proc): with
    `--workers N` the hub is a parent and N workers."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return own + sum(cpu_seconds(k) for k in kids)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


async def pg_database(dsn: str) -> tuple[str, str]:
    """A fresh PostgreSQL database for the run: (its SQLAlchemy URL, its name)."""
    import asyncpg

    name = f"hub_bench_{os.getpid()}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}", name


async def drop_pg_database(dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Load:
    def __init__(self, hub_url: str, fake_url: str, text: str, concurrency: int, chats: int) -> None:
        self.url = f"{hub_url}/webhooks/telegram"
        self.fake_url = fake_url
        self.text = text
        self.next_id = 1
        self.chats = chats
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        self.headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET}

    def body(self) -> bytes:
        uid = self.next_id
        self.next_id += 1
        # Many people talking at once: `chats` private chats, taken in turn.
        chat = 10_000_000 + uid % self.chats
        update = {
            "update_id": uid,
            "message": {
                "message_id": uid,
                "date": 1441645532,
                "chat": {"id": chat, "type": "private", "first_name": "Bench"},
                "from": {"id": chat, "is_bot": False, "first_name": "Bench"},
                "text": self.text,
                **({"entities": [{"type": "bot_command", "offset": 0, "length": 5}]} if self.text == "/help" else {}),
            },
        }
        return json.dumps(update).encode()

    async def post(self, body: bytes) -> float:
        started = time.perf_counter()
        async with self.http.post(self.url, data=body, headers=self.headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"webhook answered {resp.status}")
        return time.perf_counter() - started

    async def replies(self) -> int:
        async with self.http.get(f"{self.fake_url}/_fake/stats") as resp:
            stats = await resp.json()
        return int(stats["counts"].get("sendMessage", 0))

    async def wait_replies(self, target: int, timeout: float) -> float:
        """Wait until the fake counted `target` sendMessage calls; returns when (perf_counter)."""
        deadline = time.perf_counter() + timeout
        while True:
            if await self.replies() >= target:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {await self.replies()} of {target} replies within {timeout:.0f} s")
            await asyncio.sleep(0.02)

    async def steady(self, rate: float, seconds: float) -> tuple[list[float], float]:
        """Open loop at `rate`; returns the ack latencies and how late the sender fell at worst."""
        n = int(rate * seconds)
        bodies = [self.body() for _ in range(n)]
        latencies: list[float] = []
        tasks: list[asyncio.Task[None]] = []
        worst_lag = 0.0

        async def one(body: bytes) -> None:
            latencies.append(await self.post(body))

        t0 = time.perf_counter()
        for i, body in enumerate(bodies):
            due = t0 + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                worst_lag = max(worst_lag, now - due)
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        return latencies, worst_lag

    async def burst(self, n: int, concurrency: int) -> tuple[float, float, float]:
        """n updates, `concurrency` at a time; returns (start, last ack, all replies in) times."""
        bodies = [self.body() for _ in range(n)]
        before = await self.replies()
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                await self.post(body)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        acked = time.perf_counter()
        done = await self.wait_replies(before + n, timeout=max(120.0, n / 50))
        return start, acked, done

    async def close(self) -> None:
        await self.http.close()


def write_config(tmp: Path, tg_url: str, model_url: str | None, database_url: str | None = None) -> Path:
    model = (
        f'[[models]]\nname = "bench"\nbase_url = "{model_url}"\napi_key = "sk-bench"\nmodel = "fake-chat"\n'
        if model_url
        else ""
    )
    cfg = tmp / "hub.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "data"}"\n[http]\nport = 0\n'
        + (f'[database]\nurl = "{database_url}"\n' if database_url else "")
        + f'[telegram]\nenabled = true\nmode = "webhook"\ntoken = "{TOKEN}"\nsecret_token = "{SECRET}"\n'
        f'api_base = "{tg_url}"\n{model}',
        encoding="utf-8",
    )
    return cfg


async def workload(name: str, text: str, tg_url: str, model_url: str | None, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hub-ingest-bench-") as tmp:
        db_url, db_name = await pg_database(args.pg) if args.pg else (None, "")
        cfg = write_config(Path(tmp), tg_url, model_url, db_url)
        if args.bare:
            run_args = [str(ROOT / "bench" / "bare_webhook.py"), "--config", str(cfg)]
        else:
            run_args = ["-m", "hub", "run", "--config", str(cfg), "--workers", str(args.workers)]
        hub = HubProcess(run_args, env={}, cwd=Path(tmp))
        if args.bare:
            where = "nothing: the bare aiohttp ceiling (bench/bare_webhook.py)"
        else:
            where = f"PostgreSQL, {args.workers} worker(s)" if args.pg else "SQLite, one process"
        print(f"[{name}] hub on {where}")
        url = await hub.start(timeout=120)
        load = Load(url, tg_url, text, args.concurrency, args.chats)
        try:
            base = await load.replies()
            warm = 300
            await asyncio.gather(*(load.post(load.body()) for _ in range(warm)))
            await load.wait_replies(base + warm, timeout=60)

            base = await load.replies()
            latencies, lag = await load.steady(args.rate, args.steady_s)
            await load.wait_replies(base + len(latencies), timeout=120)
            ms = [x * 1000 for x in latencies]
            print(f"[{name}] steady {args.rate:.0f} updates/s for {args.steady_s:.0f} s ({len(ms)} updates):")
            print(
                f"  ack latency p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
                f"max {max(ms):.1f} ms, mean {statistics.fmean(ms):.2f} ms; sender lag at worst {lag * 1000:.1f} ms"
            )

            spy = _profiler(hub, args.profile, name)
            if spy is not None:
                await asyncio.sleep(1.0)  # let it attach
            assert hub.proc is not None
            cpu_before = cpu_seconds(hub.proc.pid)
            busy_before = machine_busy()
            try:
                start, acked, done = await load.burst(args.burst, args.concurrency)
            finally:
                _stop_profiler(spy)
            cpu_ms = (cpu_seconds(hub.proc.pid) - cpu_before) * 1000 / args.burst
            busy_after = machine_busy()
            busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
            print(f"[{name}] burst of {args.burst} updates, {args.concurrency} connections, {args.chats} chats:")
            print(
                f"  acked {args.burst / (acked - start):.0f} updates/s; in → out {args.burst / (done - start):.0f} "
                f"updates/s (last reply {done - acked:.2f} s after the last ack)"
            )
            print(
                f"  hub CPU {cpu_ms:.2f} ms per update (user+system, all threads): "
                f"at most {1000 / cpu_ms:.0f} updates/s on one core"
            )
            print(f"  machine CPU busy {busy * 100:.0f}% of {os.cpu_count()} cores during the burst")
        finally:
            await load.close()
            code = hub.terminate(timeout=30)
            if code != 0:
                print(f"  hub exited {code}; log: {hub.log_path}", file=sys.stderr)
            if args.pg:
                await drop_pg_database(args.pg, db_name)


def _profiler(hub: HubProcess, out_dir: str | None, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy on the hub process during the burst (collapsed stacks), when asked for."""
    if not out_dir or hub.proc is None:
        return None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = Path(out_dir) / f"{''.join(c if c.isalnum() else '_' for c in name)}.txt"
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(hub.proc.pid), "--gil", "--format", "raw", "--rate", "250", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(f"  profile: {out}")
    return spy


def _stop_profiler(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(2)
        spy.wait(30)


async def run(args: argparse.Namespace) -> None:
    fakes = subprocess.Popen(
        [sys.executable, __file__, "--fakes"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert fakes.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(fakes.stdout.readline), timeout=60)
        _, tg_url, model_url = line.split()
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
        if args.only in (None, "help"):
            await workload("/help", "/help", tg_url, None, args)
        if args.only in (None, "text"):
            await workload("text via model", "hello, how are you?", tg_url, model_url, args)
    finally:
        fakes.terminate()
        fakes.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="updates/s in the steady phase")
    parser.add_argument("--steady-s", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--chats", type=int, default=1000, help="private chats the updates come from, in turn")
    parser.add_argument("--only", choices=["help", "text"])
    parser.add_argument("--profile", metavar="DIR", help="py-spy the hub during the bursts (collapsed stacks)")
    parser.add_argument("--workers", type=int, default=1, help="hub run --workers N (N > 1 needs --pg)")
    parser.add_argument(
        "--pg",
        nargs="?",
        const="postgresql://postgres@127.0.0.1:5432/test",
        metavar="DSN",
        help="run the hub on a fresh database of this PostgreSQL server (default: the local one)",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="run the same load against a bare aiohttp ack + one POST server instead of the hub (the ceiling)",
    )
    parser.add_argument("--fakes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fakes:
        asyncio.run(serve_fakes())
        return
    os.environ.pop("HUB_CONFIG", None)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
