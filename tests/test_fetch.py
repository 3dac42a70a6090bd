"""The guarded URL download: which addresses are refused, and the fetcher over real sockets."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from harness import FakeServer, make_settings
from yarl import URL

from hub.errors import ConfigError
from hub.fetch import (
    Fetcher,
    FetchError,
    FetchPolicy,
    FetchRefused,
    FetchTooLarge,
    GuardedResolver,
    policy_from_settings,
    refused_kind,
)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.10.20", "link-local"),
        ("fe80::1", "link-local"),
        ("fd12:3456::1", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "reserved"),  # carrier-grade NAT
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4 inside IPv6 is judged as itself
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_rules(address: str, kind: str | None) -> None:
    assert refused_kind(ipaddress.ip_address(address)) == kind


def test_a_literal_ip_url_in_a_refused_range_is_refused_naming_the_host() -> None:
    policy = FetchPolicy.of(["http://127.0.0.1:8001/v1"])
    with pytest.raises(FetchRefused, match=r"127\.0\.0\.1:8002: a loopback address"):
        policy.check_url(URL("http://127.0.0.1:8002/x.png"))
    with pytest.raises(FetchRefused, match=r"169\.254\.169\.254:80: a cloud metadata address"):
        policy.check_url(URL("http://169.254.169.254/latest/meta-data/"))
    with pytest.raises(FetchRefused, match=r"\[?::1\]?:443"):
        policy.check_url(URL("https://[::1]/"))
    policy.check_url(URL("http://127.0.0.1:8001/files/a.mp4"))  # the host and port the configuration names
    policy.check_url(URL("https://8.8.8.8/a.png"))  # public
    policy.check_url(URL("https://cdn.example.com/a.png"))  # a name: the resolver judges it


def test_only_http_and_https_are_fetched() -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/a", "gopher://127.0.0.1:6379/_INFO"):
        with pytest.raises(FetchRefused, match="not an http"):
            FetchPolicy().check_url(URL(url))


def test_fetch_allow_lets_in_hostnames_and_cidrs() -> None:
    policy = FetchPolicy.of([], ["media.internal", "10.20.0.0/16", "127.0.0.5"])
    policy.check_url(URL("http://10.20.3.4/a"))
    policy.check_url(URL("http://127.0.0.5:9000/a"))
    assert policy.trusts("MEDIA.internal.", 443)
    assert policy.refusal(ipaddress.ip_address("10.20.9.9")) is None
    assert policy.refusal(ipaddress.ip_address("10.21.0.1")) == "private"
    with pytest.raises(FetchRefused):
        policy.check_url(URL("http://10.21.0.1/a"))


def test_the_policy_trusts_every_host_the_configuration_names(tmp_path: Path) -> None:
    s = make_settings(
        tmp_path,
        """
[http]
fetch_allow = ["files.lan", "192.168.7.0/24"]
[telegram]
api_base = "http://127.0.0.1:8081"
[wecom]
api_base = "http://localhost:9100"
[[models]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"
model = "qwen"
[providers.image]
kind = "sdxl"
base_url = "http://sdxl.lan:7860"
[providers.hunyuan]
base_url = "http://127.0.0.1:9001"
api_key = "k"
""",
    )
    policy = policy_from_settings(s)
    for host, port in (("127.0.0.1", 8081), ("localhost", 9100), ("127.0.0.1", 11434), ("sdxl.lan", 7860)):
        assert policy.trusts(host, port), (host, port)
    assert policy.trusts("127.0.0.1", 9001)
    assert not policy.trusts("127.0.0.1", 9002)
    assert policy.trusts("files.lan", 80)
    assert policy.refusal(ipaddress.ip_address("192.168.7.9")) is None


def test_check_config_names_a_bad_fetch_allow_entry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, '[http]\nfetch_allow = ["ok.example", "not a host", "10.0.0.0/33"]\n')
    keys = [key for key, _ in caught.value.problems]
    assert keys == ["http.fetch_allow.1", "http.fetch_allow.2"]


# --- the resolver the connector dials through -------------------------------------------------


class StaticResolver(AbstractResolver):
    """Answers from a table, as a DNS server under an attacker's control would."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=ip,
                port=port,
                family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in self.table[host]
        ]

    async def close(self) -> None:
        pass


async def test_the_resolver_drops_refused_addresses_and_refuses_when_none_is_left() -> None:
    inner = StaticResolver({"mixed.test": ["10.0.0.7", "93.184.216.34"], "rebind.test": ["127.0.0.1"]})
    guard = GuardedResolver(FetchPolicy(), inner)
    assert [r["host"] for r in await guard.resolve("mixed.test", 443)] == ["93.184.216.34"]
    with pytest.raises(FetchRefused, match=r"rebind\.test:80: a loopback address"):
        await guard.resolve("rebind.test", 80)
    trusted = GuardedResolver(FetchPolicy.of(["http://rebind.test"]), inner)
    assert [r["host"] for r in await trusted.resolve("rebind.test", 80)] == ["127.0.0.1"]


# --- the fetcher over real sockets ---------------------------------------------------------------


@pytest.fixture
async def origin() -> AsyncIterator[FakeServer]:
    """The configured server: serves a file, and redirects where it is told."""
    server = FakeServer()
    server.on("GET", "/file.bin", lambda rec: web.Response(body=b"x" * 1000, content_type="image/png"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def inside() -> AsyncIterator[FakeServer]:
    """A service on the hub's machine that nobody configured (a database, an admin page)."""
    server = FakeServer()
    server.on("GET", "/secret", lambda rec: web.Response(text="internal"))
    await server.start()
    yield server
    await server.stop()


def redirect_to(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


async def test_a_named_host_is_fetched_with_its_media_type(origin: FakeServer) -> None:
    fetcher = Fetcher(FetchPolicy.of([origin.url]))
    try:
        async with fetcher.open(f"{origin.url}/file.bin", max_bytes=10_000) as download:
            assert download.content_type == "image/png"
            assert await download.read() == b"x" * 1000
        with pytest.raises(FetchTooLarge):
            async with fetcher.open(f"{origin.url}/file.bin", max_bytes=999):
                pass
    finally:
        await fetcher.close()


async def test_a_redirect_from_a_named_host_to_another_local_port_is_refused(
    origin: FakeServer, inside: FakeServer
) -> None:
    origin.on("GET", "/go", lambda rec: redirect_to(f"{inside.url}/secret"))
    origin.on("GET", "/go-relative", lambda rec: redirect_to("/file.bin"))
    fetcher = Fetcher(FetchPolicy.of([origin.url]))
    try:
        with pytest.raises(FetchRefused, match=rf"127\.0\.0\.1:{URL(inside.url).port}: a loopback address"):
            async with fetcher.open(f"{origin.url}/go", max_bytes=10_000):
                pass
        async with fetcher.open(f"{origin.url}/go-relative", max_bytes=10_000) as download:
            assert download.url == f"{origin.url}/file.bin"  # a redirect within the named host is followed
    finally:
        await fetcher.close()
    assert inside.requests == []  # never dialled


async def test_a_name_resolving_to_a_local_address_is_refused_where_the_connector_dials(
    origin: FakeServer, inside: FakeServer
) -> None:
    port = URL(inside.url).port
    resolver = StaticResolver({"evil.test": ["127.0.0.1"], "files.lan": ["127.0.0.1"]})
    origin.on("GET", "/go", lambda rec: redirect_to(f"http://evil.test:{port}/secret"))
    fetcher = Fetcher(FetchPolicy.of([origin.url], ["files.lan"]), resolver=resolver)
    try:
        with pytest.raises(FetchRefused, match=rf"evil\.test:{port}: a loopback address"):
            async with fetcher.open(f"http://evil.test:{port}/secret", max_bytes=10_000):
                pass
        with pytest.raises(FetchRefused, match=r"evil\.test"):
            async with fetcher.open(f"{origin.url}/go", max_bytes=10_000):
                pass
        assert inside.requests == []
        # A name listed in fetch_allow reaches the same service.
        async with fetcher.open(f"http://files.lan:{port}/secret", max_bytes=10_000) as download:
            assert await download.read() == b"internal"
    finally:
        await fetcher.close()
    assert resolver.asked == ["evil.test", "evil.test", "files.lan"]


async def test_redirects_are_capped_and_errors_say_whether_to_retry(origin: FakeServer) -> None:
    origin.on("GET", "/loop", lambda rec: redirect_to("/loop"))
    origin.on("GET", "/busy", lambda rec: web.Response(status=503, text="later"))
    origin.on("GET", "/gone", lambda rec: web.Response(status=404, text="no such file"))
    fetcher = Fetcher(FetchPolicy.of([origin.url]))
    try:
        with pytest.raises(FetchError, match="more than 5 redirects") as loop:
            async with fetcher.open(f"{origin.url}/loop", max_bytes=100):
                pass
        assert not loop.value.retryable
        with pytest.raises(FetchError, match="HTTP 503") as busy:
            async with fetcher.open(f"{origin.url}/busy", max_bytes=100):
                pass
        assert busy.value.retryable and busy.value.body == b"later"
        with pytest.raises(FetchError, match="HTTP 404") as gone:
            async with fetcher.open(f"{origin.url}/gone", max_bytes=100):
                pass
        assert not gone.value.retryable
    finally:
        await fetcher.close()
    assert len(origin.calls("/loop")) == 6
