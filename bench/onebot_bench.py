"""OneBot v11 by HTTP POST: 5,000 private text events in, one send_private_msg out for each.

Three processes on this machine: a real `hub run` (SQLite, `[onebot]` with a secret and
`api_base`), the fakes (a OneBot HTTP API counting send_private_msg, and the tests'
OpenAI-compatible model answering at once), and this process, which POSTs signed events
(`X-Signature: sha1=...`) to `/onebot/v11/http` over `--concurrency` keep-alive connections.
Two workloads: no model (each event gets the "no model" notice as its one reply), and the
fake model (each event is a chat turn). For each, after a short warm-up:

- events/s from the first POST to the `--events`-th reply counted at the fake;
- ack latency p50/p99 of the POSTs (stored in the inbox, then 204);
- the hub's RSS when idle (after the warm-up) and at its peak (VmHWM), and its CPU time.

    python bench/onebot_bench.py [--events 5000] [--concurrency 50] [--users 1000] [--only none|model]
                                 [--pg [DSN]] [--workers N]   (N > 1 needs --pg: the pair against one process)
                                 [--profile DIR]

Goal (issue 14): at least 2,000 events/s in → out with the durable inbox on SQLite, ack p99
under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from harness import HubProcess  # noqa: E402
from ingest_bench import cpu_seconds, drop_pg_database, machine_busy, pg_database  # noqa: E402

SECRET = "bench-secret"
TOKEN = "bench-token"
SELF_ID = 10001


# --- the fakes' process ----------------------------------------------------------------------


async def serve_fakes() -> None:
    counts = {"send_private_msg": 0}

    async def send(request: web.Request) -> web.Response:
        await request.read()
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"status": "failed", "retcode": 1403}, status=403)
        counts["send_private_msg"] += 1
        mid = counts["send_private_msg"]
        return web.json_response({"status": "ok", "retcode": 0, "data": {"message_id": mid}})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application()
    app.router.add_post("/send_private_msg", send)
    app.router.add_get("/_stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    model = FakeOpenAI()
    await model.start()
    print(f"fakes {api_url} {model.base_url}", flush=True)
    while True:  # the model keeps every request it saw: drop them, the bench reads none
        await asyncio.sleep(1)
        model.requests.clear()
        model.headers.clear()


# --- measuring ------------------------------------------------------------------------------


def memory_mb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Load:
    def __init__(self, hub_url: str, api_url: str, concurrency: int, users: int) -> None:
        self.url = f"{hub_url}/onebot/v11/http"
        self.api_url = api_url
        self.users = users
        self.next_id = 1
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

    def body(self) -> tuple[bytes, dict[str, str]]:
        """One signed private text event, as NapCat posts it."""
        mid = self.next_id
        self.next_id += 1
        user = 20_000_000 + mid % self.users
        event = {
            "time": int(time.time()),
            "self_id": SELF_ID,
            "post_type": "message",
            "message_type": "private",
            "sub_type": "friend",
            "message_id": mid,
            "user_id": user,
            "message": [{"type": "text", "data": {"text": "hello, how are you?"}}],
            "raw_message": "hello, how are you?",
            "font": 14,
            "sender": {"user_id": user, "nickname": "Bench", "sex": "unknown", "age": 0},
        }
        raw = json.dumps(event, ensure_ascii=False).encode()
        signature = "sha1=" + hmac.new(SECRET.encode(), raw, hashlib.sha1).hexdigest()
        headers = {"Content-Type": "application/json", "X-Self-ID": str(SELF_ID), "X-Signature": signature}
        return raw, headers

    async def post(self, body: tuple[bytes, dict[str, str]]) -> float:
        started = time.perf_counter()
        async with self.http.post(self.url, data=body[0], headers=body[1]) as resp:
            await resp.read()
            if resp.status != 204:
                raise RuntimeError(f"the hub answered {resp.status}")
        return time.perf_counter() - started

    async def replies(self) -> int:
        async with self.http.get(f"{self.api_url}/_stats") as resp:
            return int((await resp.json())["send_private_msg"])

    async def wait_replies(self, target: int, timeout: float) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            if await self.replies() >= target:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {await self.replies()} of {target} replies within {timeout:.0f} s")
            await asyncio.sleep(0.01)

    async def burst(self, n: int, concurrency: int) -> tuple[list[float], float, float]:
        """n events, `concurrency` at a time: the ack latencies, the start and the n-th reply."""
        bodies = iter([self.body() for _ in range(n)])
        before = await self.replies()
        latencies: list[float] = []

        async def worker() -> None:
            for body in bodies:
                latencies.append(await self.post(body))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        done = await self.wait_replies(before + n, timeout=max(120.0, n / 20))
        return latencies, start, done

    async def close(self) -> None:
        await self.http.close()


def write_config(tmp: Path, api_url: str, model_url: str | None, database_url: str | None = None) -> Path:
    model = (
        f'[[models]]\nname = "bench"\nbase_url = "{model_url}"\napi_key = "sk-bench"\nmodel = "fake-chat"\n'
        if model_url
        else ""
    )
    cfg = tmp / "hub.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "data"}"\n[http]\nport = 0\n'
        + (f'[database]\nurl = "{database_url}"\n' if database_url else "")
        + f'[onebot]\nenabled = true\naccess_token = "{TOKEN}"\nsecret = "{SECRET}"\napi_base = "{api_url}"\n{model}',
        encoding="utf-8",
    )
    return cfg


async def workload(name: str, api_url: str, model_url: str | None, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hub-onebot-bench-") as tmp:
        db_url, db_name = await pg_database(args.pg) if args.pg else (None, "")
        cfg = write_config(Path(tmp), api_url, model_url, db_url)
        run_args = ["-m", "hub", "run", "--config", str(cfg), "--workers", str(args.workers)]
        hub = HubProcess(run_args, env={}, cwd=Path(tmp))
        print(f"[{name}] hub on " + (f"PostgreSQL, {args.workers} worker(s)" if args.pg else "SQLite, one process"))
        url = await hub.start(timeout=120)
        assert hub.proc is not None
        pid = hub.proc.pid
        load = Load(url, api_url, args.concurrency, args.users)
        try:
            base = await load.replies()
            warm = 200
            await asyncio.gather(*(load.post(load.body()) for _ in range(warm)))
            await load.wait_replies(base + warm, timeout=60)
            await asyncio.sleep(1.0)  # let the warm-up's work settle before reading idle memory
            idle_mb = memory_mb(pid, "VmRSS")
            spy = _profiler(pid, args.profile, name)
            cpu_before = cpu_seconds(pid)
            busy_before = machine_busy()
            try:
                latencies, start, done = await load.burst(args.events, args.concurrency)
            finally:
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(30)
            cpu = cpu_seconds(pid) - cpu_before
            busy_after = machine_busy()
            busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
            wall = done - start
            ms = [x * 1000 for x in latencies]
            print(
                f"[{name}] {args.events} private text events by HTTP POST, {args.concurrency} keep-alive connections:"
            )
            print(
                f"  {args.events / wall:.0f} events/s from the first POST to the {args.events}th reply ({wall:.2f} s)"
            )
            print(f"  ack p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, max {max(ms):.1f} ms")
            print(f"  hub RSS idle {idle_mb:.0f} MB, peak {memory_mb(pid, 'VmHWM'):.0f} MB")
            print(
                f"  hub CPU {cpu:.2f} s ({cpu / wall * 100:.0f}% of one core), "
                f"{cpu * 1000 / args.events:.2f} ms per event"
            )
            print(f"  machine CPU busy {busy * 100:.0f}% of {os.cpu_count()} cores during the burst")
        finally:
            await load.close()
            code = hub.terminate(timeout=30)
            if code != 0:
                print(f"  hub exited {code}; log: {hub.log_path}", file=sys.stderr)
            if args.pg:
                await drop_pg_database(args.pg, db_name)


def _profiler(pid: int, out_dir: str | None, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy on the hub during the burst (collapsed stacks), when asked for (`.[bench]`)."""
    if not out_dir:
        return None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = Path(out_dir) / f"onebot_{name.replace(' ', '_')}.txt"
    print(f"  profile: {out}")
    cmd = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run(args: argparse.Namespace) -> None:
    fakes = subprocess.Popen([sys.executable, __file__, "--fakes"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert fakes.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(fakes.stdout.readline), timeout=60)
        _, api_url, model_url = line.split()
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
        if args.only in (None, "none"):
            await workload("no model", api_url, None, args)
        if args.only in (None, "model"):
            await workload("fake model", api_url, model_url, args)
    finally:
        fakes.terminate()
        fakes.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--users", type=int, default=1000, help="private chats the events come from, in turn")
    parser.add_argument("--only", choices=["none", "model"])
    parser.add_argument("--profile", metavar="DIR", help="py-spy the hub during the bursts (collapsed stacks)")
    parser.add_argument("--workers", type=int, default=1, help="hub run --workers N (N > 1 needs --pg)")
    parser.add_argument(
        "--pg",
        nargs="?",
        const="postgresql://postgres@127.0.0.1:5432/test",
        metavar="DSN",
        help="run the hub on a fresh database of this PostgreSQL server (default: the local one)",
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
