"""The one bounded URL download, for channels and providers alike.

A URL the hub fetches (a provider's result, media given to the delivery API) comes from
outside, so it may point anywhere: at the metadata service of the cloud the hub runs in, at a
database on localhost, at the LAN. The fetcher refuses loopback, private, link-local,
unique-local, multicast, reserved and cloud-metadata addresses, unless the URL's host is one
the configuration already names (a provider's or model's `base_url`, a channel's `api_base`,
host and port) or matches `[http] fetch_allow` (hostnames, or CIDRs of addresses let in).

The check is made on the address the connector actually dials: the session resolves names
through `GuardedResolver`, which drops refused addresses from the answer, so a name that
resolves to a public address for one lookup and a private one for the next (DNS rebinding)
cannot slip past. Literal IP URLs never reach a resolver and are checked before the request.
Redirects are followed here, a few at most, each new URL checked again the same way.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from hub.errors import HubError
from hub.redact import safe_text, safe_url

if TYPE_CHECKING:
    from hub.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(HubError):
    """A download failed; `retryable` says whether trying again later may help."""

    def __init__(self, reason: str, *, retryable: bool, status: int | None = None, body: bytes = b"") -> None:
        self.retryable = retryable
        self.status = status
        self.body = body
        super().__init__(reason)


class FetchRefused(FetchError):
    """The URL leads to an address the hub does not fetch from: final, never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=False)


class FetchTooLarge(FetchError):
    """The body is larger than the caller takes; `size` is its length when announced."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        self.limit = limit
        self.size = size
        super().__init__(f"larger than {limit} bytes", retryable=False)


def refused_kind(ip: IPAddress) -> str | None:
    """Why an address is not fetched from (e.g. "loopback"), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 is judged as itself.
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return refused_kind(inner)
    if ip in METADATA:
        return "cloud metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL:
        return "unique-local"
    if ip.is_reserved or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved"  # e.g. carrier-grade NAT, 100.64.0.0/10
    return None


def parse_allow(entry: str) -> str | IPNetwork:
    """One `[http] fetch_allow` entry: a CIDR (or single address), else a hostname; ValueError if neither."""
    text = entry.strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_label_ok(label) for label in labels):
        raise ValueError(f"not a hostname or CIDR: {entry!r}")
    return name


def _label_ok(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isascii() and (c.isalnum() or c == "-") for c in label) and label[0] != "-"


def _norm_host(host: str) -> str:
    return host.lower().rstrip(".").strip("[]")


@dataclass(frozen=True)
class FetchPolicy:
    """Which URLs may be fetched. Empty: public addresses only."""

    # (host, port) pairs the configuration names: trusted whatever they resolve to.
    trusted: frozenset[tuple[str, int]] = frozenset()
    allow_hosts: frozenset[str] = frozenset()
    allow_nets: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, named_urls: Iterable[str | None], allow: Iterable[str] = ()) -> FetchPolicy:
        trusted = set()
        for url in named_urls:
            if url and (key := _host_port(URL(url))) is not None:
                trusted.add(key)
        hosts: set[str] = set()
        nets: list[IPNetwork] = []
        for entry in allow:
            parsed = parse_allow(entry)
            if isinstance(parsed, str):
                hosts.add(parsed)
            else:
                nets.append(parsed)
        return cls(frozenset(trusted), frozenset(hosts), tuple(nets))

    def trusts(self, host: str, port: int) -> bool:
        host = _norm_host(host)
        return (host, port) in self.trusted or host in self.allow_hosts

    def refusal(self, ip: IPAddress) -> str | None:
        if any(ip.version == net.version and ip in net for net in self.allow_nets):
            return None
        return refused_kind(ip)

    def check_url(self, url: URL) -> None:
        """Refuse a URL before any connection: a scheme other than http(s), a refused literal IP."""
        if url.scheme not in DEFAULT_PORTS or not url.raw_host:
            raise FetchRefused(f"not an http(s) URL: {safe_url(str(url))}")
        key = _host_port(url)
        assert key is not None
        host, port = key
        if self.trusts(host, port):
            return
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # a name: the resolver judges what it resolves to
        if (kind := self.refusal(ip)) is not None:
            raise FetchRefused(_refused_text(host, port, kind))


def _host_port(url: URL) -> tuple[str, int] | None:
    if not url.raw_host:
        return None
    return _norm_host(url.raw_host), url.explicit_port or DEFAULT_PORTS.get(url.scheme, 0)


def _refused_text(host: str, port: int, kind: str) -> str:
    return (
        f"refused to fetch from {host}:{port}: a {kind} address that the configuration does not name"
        " (add it to [http] fetch_allow to allow it)"
    )


def policy_from_settings(settings: Settings) -> FetchPolicy:
    """The hosts the configuration names, and `[http] fetch_allow`."""
    named: list[str | None] = [m.base_url for m in settings.models]
    for name in ("hunyuan", "music", "image"):
        provider = getattr(settings.providers, name)
        if provider is not None:
            named.append(provider.base_url)
    for name in ("telegram", "wechat", "wecom", "feishu", "qq", "onebot"):
        named.append(getattr(settings, name).api_base)
    named.append(settings.qq.token_base)
    return FetchPolicy.of(named, settings.http.fetch_allow)


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` and keeps only the addresses the policy lets the connector dial."""

    def __init__(self, policy: FetchPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._policy.trusts(host, port):
            return found
        kept: list[ResolveResult] = []
        kind = "unresolvable"
        for result in found:
            try:
                ip = ipaddress.ip_address(str(result["host"]).split("%", 1)[0])
            except ValueError:
                continue
            reason = self._policy.refusal(ip)
            if reason is None:
                kept.append(result)
            else:
                kind = reason
        if not kept:
            # Not an OSError: aiohttp passes it through as it is, so the caller sees the refusal.
            raise FetchRefused(_refused_text(_norm_host(host), port, kind))
        return kept

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class Download:
    """An open download: its final URL, media type, announced length, and its body as capped chunks."""

    url: str
    content_type: str | None
    content_length: int | None
    max_bytes: int
    _resp: aiohttp.ClientResponse = field(repr=False)

    async def chunks(self, size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The body, piece by piece; FetchTooLarge past `max_bytes`, FetchError on network trouble."""
        total = 0
        try:
            async for piece in self._resp.content.iter_chunked(size):
                total += len(piece)
                if total > self.max_bytes:
                    raise FetchTooLarge(self.max_bytes)
                yield piece
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(_describe(exc), retryable=True) from None

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])


class Fetcher:
    """One client session whose connections are dialled only to addresses the policy allows."""

    def __init__(
        self, policy: FetchPolicy, *, resolver: AbstractResolver | None = None, max_redirects: int = MAX_REDIRECTS
    ) -> None:
        self.policy = policy
        self._inner_resolver = resolver
        self._max_redirects = max_redirects
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy, self._inner_resolver))
            # No proxy from the environment: the address checked must be the one dialled.
            self._http = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @asynccontextmanager
    async def open(
        self, url: str, *, max_bytes: int, timeout_s: float = 300.0, read_timeout_s: float = 60.0
    ) -> AsyncIterator[Download]:
        """GET `url`, following redirects (each checked), and yield the open download.

        Raises FetchRefused for a refused address, FetchTooLarge when the announced length is
        over `max_bytes`, FetchError for an HTTP error status or network trouble.
        """
        resp = await self._follow(url, aiohttp.ClientTimeout(total=timeout_s, sock_read=read_timeout_s))
        try:
            if resp.status >= 400:
                body = await _head_of(resp)
                raise FetchError(
                    f"HTTP {resp.status}", retryable=_retryable(resp.status), status=resp.status, body=body
                )
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise FetchTooLarge(max_bytes, resp.content_length)
            ctype = resp.headers.get("Content-Type")
            media_type = ctype.split(";", 1)[0].strip().lower() if ctype else None
            yield Download(str(resp.url), media_type or None, resp.content_length, max_bytes, resp)
        finally:
            resp.release()

    async def _follow(self, url: str, limits: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        try:
            current = URL(url)
        except (ValueError, TypeError):
            raise FetchRefused(f"not a URL: {safe_text(url)[:200]}") from None
        http = self._session()
        for _ in range(self._max_redirects + 1):
            self.policy.check_url(current)
            try:
                resp = await http.get(current, allow_redirects=False, timeout=limits)
            except aiohttp.InvalidURL as exc:
                raise FetchRefused(f"not a valid URL: {safe_text(str(exc))}") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise FetchError(_describe(exc), retryable=True) from None
            location = resp.headers.get("Location")
            if resp.status not in REDIRECTS or not location:
                return resp
            resp.release()
            try:
                current = current.join(URL(location))
            except (ValueError, TypeError):
                raise FetchError("a redirect to something that is not a URL", retryable=False) from None
        raise FetchError(f"more than {self._max_redirects} redirects", retryable=False)


async def _head_of(resp: aiohttp.ClientResponse, limit: int = 4096) -> bytes:
    try:
        return await resp.content.read(limit)
    except (aiohttp.ClientError, TimeoutError):
        return b""


def _retryable(status: int) -> bool:
    return status in (408, 409, 425, 429) or status >= 500


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return safe_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
