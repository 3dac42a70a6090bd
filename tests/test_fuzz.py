"""A fuzz run over every inbound path of a real hub process: signed (and, where the platform
encrypts, encrypted) requests, so that the parsers are reached, carrying mutated documented
samples, wrong types per field, huge strings, deep nesting, invalid UTF-8, empty and oversized
bodies, wrong content types and broken envelopes.

Asserts: no answer >= 500, every oversized body 413, the hub still answers /healthz, and its
memory stays flat (RSS after a warm-up batch against RSS at the end). `FUZZ_N` sets the number
of cases (default a few thousand), `FUZZ_SEED` the seed. A new channel's path is one entry in
`PATHS`: its samples and its signer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import sqlite3
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fake_feishu import APP_ID as FS_APP_ID
from fake_feishu import APP_SECRET as FS_APP_SECRET
from fake_feishu import ENCRYPT_KEY as FS_KEY
from fake_feishu import bot_mention, encrypt_bytes, signed
from fake_feishu import message_event as feishu_event
from fake_onebot import at, group_message, private_message, reply, text
from fake_telegram import SECRET as TG_SECRET
from fake_telegram import TOKEN as TG_TOKEN
from fake_telegram import message_update
from fake_wechat import ACCOUNT, AGENT_ID, APP_ID, APP_SECRET, CORP_ID, CORP_SECRET, OPENID, sign
from fuzz_mutate import mutate_bytes, mutate_json, mutate_xml
from harness import HubProcess
from test_wechat_units import OA_AES, OA_TOKEN, WECOM_AES, WECOM_TOKEN
from wechatpy.crypto import PrpCrypto as OaPrp
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise.crypto import PrpCrypto as CorpPrp

from hub.events import ChatRef

FUZZ_N = int(os.environ.get("FUZZ_N", "2000"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, FUZZ_N // 10))]
SEED = int(os.environ.get("FUZZ_SEED", "20261202"))
MAX_BODY = 256 * 1024
CONCURRENCY = 8
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens: platform APIs simply fail
ONEBOT_SECRET = "fuzz-onebot-secret"

HUB_CONFIGS = {
    "main": f"""
[http]
port = 0
max_body_bytes = {MAX_BODY}

[telegram]
enabled = true
token = "{TG_TOKEN}"
secret_token = "{TG_SECRET}"
mode = "webhook"
api_base = "{CLOSED_PORT}"

[wechat]
enabled = true
app_id = "{APP_ID}"
app_secret = "{APP_SECRET}"
token = "{OA_TOKEN}"
api_base = "{CLOSED_PORT}"

[wecom]
enabled = true
corp_id = "{CORP_ID}"
agent_id = "{AGENT_ID}"
secret = "{CORP_SECRET}"
token = "{WECOM_TOKEN}"
encoding_aes_key = "{WECOM_AES}"
api_base = "{CLOSED_PORT}"

[feishu]
enabled = true
app_id = "{FS_APP_ID}"
app_secret = "{FS_APP_SECRET}"
encrypt_key = "{FS_KEY}"
mode = "webhook"
[onebot]
enabled = true
secret = "{ONEBOT_SECRET}"
api_base = "{CLOSED_PORT}"
""",
    "wechat_safe": f"""
[http]
port = 0
max_body_bytes = {MAX_BODY}

[wechat]
enabled = true
app_id = "{APP_ID}"
app_secret = "{APP_SECRET}"
token = "{OA_TOKEN}"
encoding_aes_key = "{OA_AES}"
api_base = "{CLOSED_PORT}"
""",
}


@dataclass(frozen=True)
class Wire:
    """One request as it goes on the wire."""

    method: str
    target: str  # path and query, encoded
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes


# A signer turns a (mutated) payload into the request the platform would send for it.
Signer = Callable[[bytes, random.Random], Wire]


@dataclass(frozen=True)
class InboundPath:
    name: str
    hub: str  # the HUB_CONFIGS entry that serves it
    kind: str  # json, xml or text: which structural mutations apply
    samples: Sequence[bytes]
    sign: Signer
    content_type: str | None = None  # None: the fuzzer varies it; else always this one


def _target(path: str, query: dict[str, str]) -> str:
    return f"{path}?{urllib.parse.urlencode(query)}" if query else path


def _stamp() -> dict[str, str]:
    # Fresh nonces: a replay guard must never see one twice.
    return {"timestamp": str(int(time.time())), "nonce": secrets.token_hex(8)}


def _ctype(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"Content-Type", value.encode())]


def sign_web(payload: bytes, rng: random.Random) -> Wire:
    return Wire("POST", "/api/web/chat", [], payload)


def sign_telegram(payload: bytes, rng: random.Random) -> Wire:
    return Wire("POST", "/webhooks/telegram", [(b"X-Telegram-Bot-Api-Secret-Token", TG_SECRET.encode())], payload)


def sign_onebot(payload: bytes, rng: random.Random) -> Wire:
    signature = "sha1=" + hmac.new(ONEBOT_SECRET.encode(), payload, hashlib.sha1).hexdigest()
    return Wire("POST", "/onebot/v11/http", [(b"X-Signature", signature.encode())], payload)


def sign_wechat_get(payload: bytes, rng: random.Random) -> Wire:
    q = _stamp()
    q["signature"] = sign(OA_TOKEN, q["timestamp"], q["nonce"])
    q["echostr"] = payload.decode("utf-8", "replace")
    return Wire("GET", _target("/webhooks/wechat", q), [], b"")


def sign_wechat_plain(payload: bytes, rng: random.Random) -> Wire:
    q = _stamp()
    q["signature"] = sign(OA_TOKEN, q["timestamp"], q["nonce"])
    return Wire("POST", _target("/webhooks/wechat", q), [], payload)


def _envelope(to: str, encrypted: str) -> bytes:
    return f"<xml><ToUserName><![CDATA[{to}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()


def sign_wechat_safe(payload: bytes, rng: random.Random) -> Wire:
    q = _stamp()
    encrypted = OaPrp(WeChatCrypto(OA_TOKEN, OA_AES, APP_ID).key).encrypt(payload, APP_ID).decode()
    q["msg_signature"] = sign(OA_TOKEN, q["timestamp"], q["nonce"], encrypted)
    q.update(signature=sign(OA_TOKEN, q["timestamp"], q["nonce"]), encrypt_type="aes", openid=OPENID)
    return Wire("POST", _target("/webhooks/wechat", q), [], _envelope(ACCOUNT, encrypted))


_CORP_KEY = WeChatCrypto(WECOM_TOKEN, WECOM_AES, CORP_ID).key


def sign_wecom_get(payload: bytes, rng: random.Random) -> Wire:
    q = _stamp()
    q["echostr"] = CorpPrp(_CORP_KEY).encrypt(payload, CORP_ID).decode()
    q["msg_signature"] = sign(WECOM_TOKEN, q["timestamp"], q["nonce"], q["echostr"])
    return Wire("GET", _target("/webhooks/wecom", q), [], b"")


def sign_wecom_post(payload: bytes, rng: random.Random) -> Wire:
    q = _stamp()
    encrypted = CorpPrp(_CORP_KEY).encrypt(payload, CORP_ID).decode()
    q["msg_signature"] = sign(WECOM_TOKEN, q["timestamp"], q["nonce"], encrypted)
    return Wire("POST", _target("/webhooks/wecom", q), [], _envelope(CORP_ID, encrypted))


def sign_feishu(payload: bytes, rng: random.Random) -> Wire:
    body = json.dumps({"encrypt": encrypt_bytes(payload, FS_KEY)}).encode()
    return Wire("POST", "/webhooks/feishu", list((k.encode(), v.encode()) for k, v in signed(body).items()), body)


def feishu_samples() -> list[bytes]:
    """A private text, a group @mention, an image, a post, and the URL check."""
    events = [
        feishu_event("hello there"),
        feishu_event("@_user_1 /help", chat_type="group", mentions=[bot_mention()]),
        feishu_event(message_type="image", content={"image_key": "img_v2_041b28e3-5680-48c2-9af2-497ace79333g"}),
        feishu_event(message_type="post", content={"title": "t", "content": [[{"tag": "text", "text": "rich"}]]}),
        {"challenge": "ajls384kdjx98XX", "token": "v-token-123", "type": "url_verification"},
    ]
    return [json.dumps(e, ensure_ascii=False).encode() for e in events]


def _xml(fields: dict[str, str]) -> bytes:
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" if not v.isdigit() else f"<{k}>{v}</{k}>" for k, v in fields.items())
    return f"<xml>{inner}</xml>".encode()


def wechat_samples(to: str, sender: str, agent: str | None = None) -> list[bytes]:
    """The message kinds of the platforms' documentation, one of each."""
    head = {"ToUserName": to, "FromUserName": sender, "CreateTime": "1348831860"}
    tail = {"AgentID": agent} if agent else {}
    kinds = [
        {"MsgType": "text", "Content": "this is a test", "MsgId": "1234567890123456"},
        {"MsgType": "image", "PicUrl": "http://example.com/p.jpg", "MediaId": "media_id", "MsgId": "1234567890123457"},
        {"MsgType": "voice", "MediaId": "media_id", "Format": "amr", "Recognition": "腾讯微信团队", "MsgId": "12345"},
        {"MsgType": "video", "MediaId": "media_id", "ThumbMediaId": "thumb_media_id", "MsgId": "1234567890123458"},
        {"MsgType": "location", "Location_X": "23.134521", "Location_Y": "113.358803", "Scale": "20",
         "Label": "位置信息", "MsgId": "1234567890123459"},
        {"MsgType": "link", "Title": "公众平台官网链接", "Description": "公众平台官网链接",
         "Url": "http://example.com/", "MsgId": "1234567890123460"},
        {"MsgType": "event", "Event": "subscribe", "EventKey": "qrscene_123123"},
        {"MsgType": "event", "Event": "CLICK", "EventKey": "EVENTKEY"},
    ]  # fmt: skip
    return [_xml({**head, **k, **tail}) for k in kinds]


def telegram_samples() -> list[bytes]:
    photo = [{"file_id": "AgAD", "file_unique_id": "u1", "width": 90, "height": 60, "file_size": 1200}]
    group = {"id": -1001234567890, "type": "supergroup", "title": "Fuzzers"}
    updates = [
        message_update("hello there", update_id=900001),
        message_update("/help", update_id=900002, entities=[{"type": "bot_command", "offset": 0, "length": 5}]),
        message_update(None, update_id=900003, photo=photo, caption="a photo"),
        message_update("hi @HubTestBot", update_id=900004, chat_type="supergroup", chat_id=group["id"]),
        message_update("a reply", update_id=900005, reply_to_message=message_update("earlier", update_id=1)["message"]),
    ]
    updates[3]["message"]["chat"] = group
    updates[3]["message"]["entities"] = [{"type": "mention", "offset": 3, "length": 11}]
    return [json.dumps(u, ensure_ascii=False).encode() for u in updates]


def onebot_samples() -> list[bytes]:
    image = {"type": "image", "data": {"file": "a.image", "url": "https://multimedia.nt.qq.com.cn/a"}}
    events = [
        private_message("10001", 20001, [text("hello")], 701),
        private_message("10001", 20001, "[CQ:face,id=1]hi &#91;x&#93;", 702),
        group_message("10001", 30001, 20001, [reply(5), at(10001), text(" look"), image], 703),
        {"post_type": "meta_event", "meta_event_type": "heartbeat", "self_id": 10001, "time": 1},
    ]
    return [json.dumps(e, ensure_ascii=False).encode() for e in events]


WEB_SAMPLES = [
    json.dumps({"session": "fuzz-1", "text": "hello"}).encode(),
    json.dumps({"session": "fuzz.2", "text": "/help", "id": "m-1"}).encode(),
    json.dumps({"session": "fuzz_3", "text": "你好，世界"}, ensure_ascii=False).encode(),
]

PATHS: list[InboundPath] = [
    InboundPath("web chat POST", "main", "json", WEB_SAMPLES, sign_web, content_type="application/json"),
    InboundPath("telegram webhook", "main", "json", telegram_samples(), sign_telegram),
    InboundPath("wechat GET", "main", "text", [b"5837397520665436492", "回声".encode()], sign_wechat_get),
    InboundPath("wechat plain POST", "main", "xml", wechat_samples(ACCOUNT, OPENID), sign_wechat_plain),
    InboundPath("wechat safe POST", "wechat_safe", "xml", wechat_samples(ACCOUNT, OPENID), sign_wechat_safe),
    InboundPath("wecom GET", "main", "text", [b"1288432023552776189"], sign_wecom_get),
    InboundPath("wecom POST", "main", "xml", wechat_samples(CORP_ID, "ChenJiaShun", AGENT_ID), sign_wecom_post),
    InboundPath("feishu webhook", "main", "json", feishu_samples(), sign_feishu),
    InboundPath("onebot HTTP POST", "main", "json", onebot_samples(), sign_onebot),
]

CONTENT_TYPES = [
    "application/json",
    "text/xml",
    "application/xml; charset=utf-8",
    "text/plain",
    "multipart/form-data; boundary=zz",
    "application/x-www-form-urlencoded",
    "",
]


@dataclass
class Case:
    path: InboundPath
    wire: Wire
    mutation: str
    huge: bool


def make_case(rng: random.Random, path: InboundPath) -> Case:
    sample = rng.choice(path.samples)
    roll = rng.random()
    if roll < 0.04:
        huge = True
        payload, mutation = sample + b" " * (MAX_BODY + rng.randint(1, 4096)), "huge body"
    else:
        huge = False
        if roll < 0.15:
            payload, mutation = sample, "sample"
        elif roll < 0.55 and path.kind == "json":
            payload, mutation = mutate_json(rng, sample)
        elif roll < 0.55 and path.kind == "xml":
            payload, mutation = mutate_xml(rng, sample)
        else:
            payload, mutation = mutate_bytes(rng, sample, MAX_BODY)
    if path.kind == "text":
        # Carried in the query: past aiohttp's 8 KiB request line, the connection is just closed.
        payload = payload[:2000]
    wire = path.sign(payload, rng)
    headers = list(wire.headers)
    ctype = path.content_type
    if ctype is None:
        ctype = rng.choice(CONTENT_TYPES)
    if ctype:
        headers += _ctype(ctype)
    body = wire.body
    if huge and wire.method == "GET":
        huge = False  # a GET carries its payload in the query: a long query, not a large body
    elif not huge and rng.random() < 0.08:
        body, headers, target, mutation = _break_envelope(rng, wire, headers, mutation)
        return Case(path, Wire(wire.method, target, headers, body), mutation, False)
    return Case(path, Wire(wire.method, wire.target, headers, body), mutation, huge)


def _break_envelope(
    rng: random.Random, wire: Wire, headers: list[tuple[bytes, bytes]], mutation: str
) -> tuple[bytes, list[tuple[bytes, bytes]], str, str]:
    """After signing: a garbled signature, secret, query or envelope."""
    choice = rng.randrange(4)
    if choice == 0:
        bad = rng.choice([b"\xff\xfe\xc3(", "秘密".encode(), b"", b"x" * 300])
        headers = [(k, bad if k.startswith(b"X-Telegram") else v) for k, v in headers]
        return wire.body, headers, wire.target, mutation + " + bad secret header"
    if choice == 1:
        return wire.body, headers, wire.target.replace("signature=", "signature=%FF%FE"), mutation + " + bad signature"
    if choice == 2:
        junk = rng.choice(["timestamp=%00", "nonce=%E2%28%A1", "msg_signature=", "echostr=" + "A" * 5000])
        return wire.body, headers, wire.target + ("&" if "?" in wire.target else "?") + junk, mutation + " + junk query"
    body, _ = mutate_bytes(rng, wire.body, MAX_BODY)
    return body, headers, wire.target, mutation + " + broken envelope"


async def send(port: int, wire: Wire, timeout: float = 60.0) -> int:
    """One request over a fresh connection; the status (0 if the server answered nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{wire.method} {wire.target} HTTP/1.1".encode(), f"Host: 127.0.0.1:{port}".encode()]
        head += [b"Connection: close", f"Content-Length: {len(wire.body)}".encode()]
        head += [k + b": " + v for k, v in wire.headers]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + wire.body)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the server may answer (413) before it has read the whole body
        line = await asyncio.wait_for(reader.readline(), timeout)
        # Read to the end: a streamed answer (the web chat's) ends with the connection.
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except ConnectionError:
        line = b""
    finally:
        writer.close()
    parts = line.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    per_path: dict[str, Counter[int]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)

    def add(self, case: Case, status: int) -> None:
        self.statuses[status] += 1
        self.per_path.setdefault(case.path.name, Counter())[status] += 1
        if status >= 500 or status == 0 or (case.huge and status != 413):
            self.bad.append(f"{case.path.name}: {case.mutation} -> {status} ({case.wire.target[:80]})")


async def run_cases(plan: Sequence[tuple[InboundPath, int]], ports: dict[str, int], tally: Tally) -> None:
    """Each case is built from its own seed when it is sent: deterministic whatever the order,
    and its timestamp is fresh."""
    queue = list(reversed(plan))

    async def worker() -> None:
        while queue:
            path, seed = queue.pop()
            case = make_case(random.Random(seed), path)
            tally.add(case, await send(ports[case.path.hub], case.wire))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


# OneBot chats carry their account: <self_id>/<peer>.
STORED_ID = re.compile(r"-?[A-Za-z0-9_.@-]{1,128}|[0-9]{1,20}/[0-9]{1,20}")


def stored_problems(home: Path) -> list[str]:
    """Inbox rows that a well-formed callback could not have produced."""
    with sqlite3.connect(home / "data" / "hub.db") as conn:
        rows = conn.execute("SELECT channel, event_id, chat, sender, payload FROM inbox").fetchall()
    problems = []
    for channel, event_id, chat, sender, payload in rows:
        ref = ChatRef.parse(chat)
        ok = (
            len(event_id) <= 191
            and str(ref) == chat
            and STORED_ID.fullmatch(ref.chat_id) is not None
            and sender.startswith(f"{channel}:")
            and isinstance(json.loads(payload), dict)
        )
        if not ok:
            problems.append(f"{channel} {event_id[:40]!r} {chat[:60]!r} {sender[:60]!r}")
    return problems


async def start_hubs(tmp_path: Path, hubs: dict[str, HubProcess]) -> dict[str, int]:
    for name, toml in HUB_CONFIGS.items():
        home = tmp_path / name
        home.mkdir()
        cfg = home / "hub.toml"
        cfg.write_text(f'data_dir = "{home / "data"}"\n{toml}', encoding="utf-8")
        hubs[name] = HubProcess(["-m", "hub", "run", "--config", str(cfg)], {}, home)
        await hubs[name].start(timeout=120)
    return {name: int(h.url.rsplit(":", 1)[1]) for name, h in hubs.items()}


def report(tally: Tally, seconds: float, rss: dict[str, tuple[int, int]]) -> str:
    total = sum(tally.statuses.values())
    lines = [f"fuzz: {total} cases in {seconds:.1f} s (seed {SEED}); statuses {dict(sorted(tally.statuses.items()))}"]
    lines += [f"fuzz:   {name}: {dict(sorted(counts.items()))}" for name, counts in tally.per_path.items()]
    lines += [f"fuzz: RSS of hub {n}: {a} KiB after the warm-up, {b} KiB at the end" for n, (a, b) in rss.items()]
    return "\n".join(lines)


async def test_every_inbound_path_survives_fuzzing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    hubs: dict[str, HubProcess] = {}
    try:
        ports = await start_hubs(tmp_path, hubs)
        pids = {name: h.proc.pid for name, h in hubs.items() if h.proc}
        started = time.monotonic()
        plan = [(rng.choice(PATHS), rng.getrandbits(64)) for _ in range(FUZZ_N)]
        warmup = max(len(PATHS) * 20, FUZZ_N // 5)
        tally = Tally()
        await run_cases(plan[:warmup], ports, tally)
        rss_warm = {name: rss_kib(pid) for name, pid in pids.items()}
        await run_cases(plan[warmup:], ports, tally)
        rss = {name: (rss_warm[name], rss_kib(pid)) for name, pid in pids.items()}
        seconds = time.monotonic() - started
        with capsys.disabled():
            print("\n" + report(tally, seconds, rss))
        for name, h in hubs.items():
            assert h.proc is not None and h.proc.poll() is None, f"{name} died:\n{h.logs()[-3000:]}"
            assert await send(ports[name], Wire("GET", "/healthz", [], b"")) == 200
        assert tally.bad == [], "\n".join(tally.bad[:30])
        for name in hubs:
            assert stored_problems(tmp_path / name) == []
        for path in PATHS:
            # Signed well enough to reach the parser: some cases pass, some are refused as malformed.
            counts = tally.per_path.get(path.name, Counter())
            assert counts[200] + counts[204] > 0, f"{path.name}: {dict(counts)}"  # OneBot acks 204
            assert path.kind == "text" or counts[400] > 0, f"{path.name}: {dict(counts)}"
        for name, (warm, end) in rss.items():
            # Generous: allocator growth is fine, a per-request leak over thousands of cases is not.
            assert end < warm * 1.5 + 64 * 1024, f"hub {name}: RSS {warm} -> {end} KiB"
    finally:
        for h in hubs.values():
            h.kill()
