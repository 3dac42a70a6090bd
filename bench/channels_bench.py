"""WeChat, WeCom, Feishu and QQ webhooks: a burst of signed `/help` messages in, one reply out each.

A real `hub run` (SQLite, one process) with the WeChat Official Account (safe mode, push
replies), WeCom (app), Feishu (webhook mode, encrypted and signed events) and QQ (official bot,
ed25519-signed webhooks) channels enabled, against the tests' fake platforms, which run in this
process (tests/fake_wechat.py, fake_feishu.py, fake_qq.py) with the client playing each
platform's servers. For each channel in turn, after a short warm-up, `--burst` text messages
carrying `/help`, from `--users` users in turn, over `--concurrency` keep-alive connections
(bodies encrypted and signed before the clock starts):

- events/s from the first POST to the last reply accepted by the fake platform;
- ack latency p50/p99 of the POSTs (stored in the inbox, then the platform's answer);
- the hub's CPU time per event (user + system, all threads, from /proc/<pid>/stat).

    python bench/channels_bench.py [--only wechat|wecom|feishu|qq] [--burst 2000]
                                   [--concurrency 50] [--users 200] [--profile [DIR]]

`--profile` records the hub with py-spy during each burst (`DIR/<channel>.txt`, collapsed
stacks, which any flame graph tool reads).

Goal (issue 17): about 0.5 ms of hub CPU per inbound event, on every channel alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import fake_feishu  # noqa: E402
import fake_qq  # noqa: E402
from fake_wechat import (  # noqa: E402
    AGENT_ID,
    APP_ID,
    APP_SECRET,
    CORP_ID,
    CORP_SECRET,
    FakeWeChatApi,
    WeChatServer,
    text_xml,
)
from harness import HubProcess  # noqa: E402
from ingest_bench import _profiler, _stop_profiler, cpu_seconds, machine_busy, percentile  # noqa: E402

CHANNELS = ("wechat", "wecom", "feishu", "qq")
WECHAT_TOKEN = "bench-token"
WECHAT_AES = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # WeChat's own sample key
WECOM_TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"  # WeCom's official sample
WECOM_AES = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
TEXT = "/help"
RETRIES = 5


@dataclass
class Fakes:
    wechat: FakeWeChatApi  # the Official Account's and WeCom's API both
    feishu: fake_feishu.FakeFeishu
    qq: fake_qq.FakeQQ

    async def stop(self) -> None:
        await self.wechat.stop()
        await self.feishu.stop()
        await self.qq.stop()


# One signed (and encrypted) POST: path and query, body, headers.
Request = tuple[str, dict[str, str], bytes, dict[str, str]]


@dataclass
class Channel:
    """How to make one message for a channel, and how many replies its fake accepted."""

    name: str
    make: Callable[[int], Request]
    replies: Callable[[], int]
    ok_status: int = 200


def channels(fakes: Fakes, users: int) -> dict[str, Channel]:
    wechat = WeChatServer(WECHAT_TOKEN, WECHAT_AES)
    wecom = WeChatServer(WECOM_TOKEN, WECOM_AES, CORP_ID, enterprise=True, path="/webhooks/wecom")
    api = fakes.wechat

    def sent(path: str) -> Callable[[], int]:
        return lambda: sum(1 for r in api.server.calls(path) if getattr(r, "accepted", False))

    def make_wechat(n: int) -> Request:
        params, body = wechat.request(text_xml(TEXT, str(10_000_000 + n), sender=f"oBench{n % users:022d}"))
        return "/webhooks/wechat", params, body.encode(), {"Content-Type": "text/xml"}

    def make_wecom(n: int) -> Request:
        xml = text_xml(TEXT, str(20_000_000 + n), sender=f"bench{n % users}", to=CORP_ID, agent=AGENT_ID)
        params, body = wecom.request(xml)
        return "/webhooks/wecom", params, body.encode(), {"Content-Type": "text/xml"}

    def make_feishu(n: int) -> Request:
        user = n % users
        event = fake_feishu.message_event(TEXT, sender=f"ou_bench{user:030d}", message_id=f"om_bench{n:08d}")
        event["event"]["message"]["chat_id"] = f"oc_bench{user:024d}"  # one p2p chat per user
        body = fake_feishu.encrypted_body(event)
        return "/webhooks/feishu", {}, body, {"Content-Type": "application/json", **fake_feishu.signed(body)}

    def make_qq(n: int) -> Request:
        envelope = fakes.qq.c2c(TEXT, user=f"BENCH{n % users:027X}")
        body = json.dumps(envelope, ensure_ascii=False).encode()
        return "/webhooks/qq", {}, body, fake_qq.signed_headers(body)

    return {
        "wechat": Channel("wechat", make_wechat, sent("/cgi-bin/message/custom/send")),
        "wecom": Channel("wecom", make_wecom, sent("/cgi-bin/message/send")),
        "feishu": Channel("feishu", make_feishu, lambda: len(fakes.feishu.messages())),
        "qq": Channel("qq", make_qq, lambda: len(fakes.qq.sent)),
    }


def write_config(tmp: Path, fakes: Fakes, enabled: list[str]) -> Path:
    sections = {
        "wechat": f'[wechat]\nenabled = true\napp_id = "{APP_ID}"\napp_secret = "{APP_SECRET}"\n'
        f'token = "{WECHAT_TOKEN}"\nencoding_aes_key = "{WECHAT_AES}"\napi_base = "{fakes.wechat.url}"\n',
        "wecom": f'[wecom]\nenabled = true\ncorp_id = "{CORP_ID}"\nagent_id = "{AGENT_ID}"\n'
        f'secret = "{CORP_SECRET}"\ntoken = "{WECOM_TOKEN}"\nencoding_aes_key = "{WECOM_AES}"\n'
        f'api_base = "{fakes.wechat.url}"\n',
        "feishu": fake_feishu.feishu_toml(fakes.feishu.url),
        "qq": f'[qq]\nenabled = true\napp_id = "{fake_qq.APP_ID}"\napp_secret = "{fake_qq.APP_SECRET}"\n'
        f'api_base = "{fakes.qq.api.url}"\ntoken_base = "{fakes.qq.tokens.url}"\n',
    }
    cfg = tmp / "hub.toml"
    cfg.write_text(
        f'data_dir = "{tmp / "data"}"\n[http]\nport = 0\n' + "\n".join(sections[c] for c in enabled),
        encoding="utf-8",
    )
    return cfg


class Load:
    def __init__(self, hub_url: str, concurrency: int) -> None:
        self.url = hub_url
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        self.next_n = 1
        self.refused = 0  # 5xx answers (the POST is tried again)

    async def post(self, ch: Channel, req: Request) -> float:
        """POST one message until it is taken, as the platforms retry; its latency to the ack."""
        path, params, body, headers = req
        started = time.perf_counter()
        for _ in range(RETRIES):
            async with self.http.post(self.url + path, params=params, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == ch.ok_status:
                    return time.perf_counter() - started
                if resp.status < 500:
                    raise RuntimeError(f"{ch.name}: the hub answered {resp.status}")
                self.refused += 1
        raise RuntimeError(f"{ch.name}: the hub answered {resp.status} {RETRIES} times")

    def bodies(self, ch: Channel, n: int) -> list[Request]:
        first, self.next_n = self.next_n, self.next_n + n
        return [ch.make(i) for i in range(first, first + n)]

    async def wait_replies(self, ch: Channel, target: int, timeout: float) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            if ch.replies() >= target:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{ch.name}: only {ch.replies()} of {target} replies within {timeout:.0f} s")
            await asyncio.sleep(0.01)

    async def burst(self, ch: Channel, n: int, concurrency: int) -> tuple[list[float], float, float]:
        """n messages, `concurrency` at a time: the ack latencies, the start and the n-th reply."""
        queue = iter(self.bodies(ch, n))
        before = ch.replies()
        latencies: list[float] = []

        async def worker() -> None:
            for req in queue:
                latencies.append(await self.post(ch, req))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        done = await self.wait_replies(ch, before + n, timeout=max(120.0, n / 20))
        return latencies, start, done

    async def close(self) -> None:
        await self.http.close()


async def measure(hub: HubProcess, load: Load, ch: Channel, args: argparse.Namespace) -> None:
    assert hub.proc is not None
    pid = hub.proc.pid
    warm = 200
    base = ch.replies()
    await asyncio.gather(*(load.post(ch, req) for req in load.bodies(ch, warm)))
    await load.wait_replies(ch, base + warm, timeout=60)
    await asyncio.sleep(0.5)  # let the warm-up's work settle
    spy = _profiler(hub, args.profile, ch.name)
    if spy is not None:
        await asyncio.sleep(1.0)  # let it attach
    load.refused = 0
    cpu_before = cpu_seconds(pid)
    busy_before = machine_busy()
    try:
        latencies, start, done = await load.burst(ch, args.burst, args.concurrency)
    finally:
        _stop_profiler(spy)
    cpu = cpu_seconds(pid) - cpu_before
    busy_after = machine_busy()
    busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
    wall = done - start
    ms = [x * 1000 for x in latencies]
    print(
        f"[{ch.name}] {args.burst} '/help' messages, {args.concurrency} connections, {args.users} users: "
        f"{args.burst / wall:.0f} events/s in → out ({wall:.2f} s); "
        f"ack p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms; "
        f"hub CPU {cpu * 1000 / args.burst:.3f} ms per event; machine busy {busy * 100:.0f}%"
        + (f"; {load.refused} POSTs answered 5xx (tried again)" if load.refused else ""),
        flush=True,
    )


async def run(args: argparse.Namespace) -> None:
    fakes = Fakes(FakeWeChatApi(), fake_feishu.FakeFeishu(), fake_qq.FakeQQ())
    await fakes.wechat.start()
    await fakes.feishu.start()
    await fakes.qq.start()
    enabled = [args.only] if args.only else list(CHANNELS)
    table = channels(fakes, args.users)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; hub on SQLite")
    try:
        with tempfile.TemporaryDirectory(prefix="hub-channels-bench-") as tmp:
            cfg = write_config(Path(tmp), fakes, enabled)
            hub = HubProcess(["-m", "hub", "run", "--config", str(cfg)], env={}, cwd=Path(tmp))
            url = await hub.start(timeout=120)
            load = Load(url, args.concurrency)
            try:
                for name in enabled:
                    await measure(hub, load, table[name], args)
            except Exception:
                print(f"hub log, last lines:\n{hub.logs()[-6000:]}", file=sys.stderr)
                raise
            finally:
                await load.close()
                code = hub.terminate(timeout=30)
                if code != 0:
                    print(f"hub exited {code}; log:\n{hub.logs()[-4000:]}", file=sys.stderr)
    finally:
        await fakes.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=CHANNELS)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--users", type=int, default=200, help="users the messages come from, in turn")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="/tmp/channels-profile",
        metavar="DIR",
        help="py-spy the hub during each burst (collapsed stacks, DIR/<channel>.txt)",
    )
    args = parser.parse_args()
    if args.burst < 1 or args.concurrency < 1 or args.users < 1:
        parser.error("need positive --burst, --concurrency and --users")
    os.environ.pop("HUB_CONFIG", None)
    # py-spy installed in the venv (`.[bench]`) is found without activating it.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
