"""Prometheus metrics, owned by the app (no process-wide globals), in the text exposition format.

Written here instead of with the client library: counting is a dict update on the hot path,
and its ~30 modules (an HTTP server, WSGI, gzip, a decorator compiler) are not imported at
every start for one GET /metrics. The text is what the client library writes, `_created`
series included; a test renders both and compares them.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar


class _Child:
    """One labelled series: a value, its creation time and, for a histogram, bucket counts."""

    __slots__ = ("buckets", "created", "value")

    def __init__(self, n_buckets: int) -> None:
        self.value = 0.0  # a histogram's sum
        self.created = time.time()
        self.buckets = [0] * n_buckets

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _Counter(_Child):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class _Observed(_Child):
    __slots__ = ("bounds",)

    def __init__(self, bounds: Sequence[float]) -> None:
        super().__init__(len(bounds))
        self.bounds = bounds

    def observe(self, amount: float) -> None:
        self.value += amount
        self.buckets[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount; the last is +Inf


C = TypeVar("C", bound=_Child)


class _Family(Generic[C]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        if not self.labelnames:
            self._children[()] = self._new()

    def _new(self) -> C:
        raise NotImplementedError

    def labels(self, *values: object, **by_name: object) -> C:
        if not self.labelnames:
            raise ValueError(f"no label names were set for {self.name}")
        if values and by_name:
            raise ValueError("give label values by position or by name, not both")
        if by_name:
            if sorted(by_name) != sorted(self.labelnames):
                raise ValueError(f"incorrect label names for {self.name}")
            key = tuple(str(by_name[n]) for n in self.labelnames)
        else:
            if len(values) != len(self.labelnames):
                raise ValueError(f"incorrect label count for {self.name}")
            key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new()
        return child

    def _unlabelled(self) -> C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels: call .labels() first")
        return self._children[()]

    def lines(self) -> Iterator[str]:
        raise NotImplementedError

    def _created(self) -> Iterator[str]:
        if not self._children:
            return
        yield from _header(f"{self.name}_created", self.documentation, "gauge")
        for key, child in self._children.items():
            yield _sample(f"{self.name}_created", self._labels(key), child.created)

    def _labels(self, key: tuple[str, ...]) -> dict[str, str]:
        return dict(zip(self.labelnames, key, strict=True))


class Counter(_Family[_Counter]):
    def _new(self) -> _Counter:
        return _Counter(0)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def lines(self) -> Iterator[str]:
        yield from _header(f"{self.name}_total", self.documentation, "counter")
        for key, child in self._children.items():
            yield _sample(f"{self.name}_total", self._labels(key), child.value)
        yield from self._created()


class Gauge(_Family[_Child]):
    def _new(self) -> _Child:
        return _Child(0)

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def lines(self) -> Iterator[str]:
        yield from _header(self.name, self.documentation, "gauge")
        for key, child in self._children.items():
            yield _sample(self.name, self._labels(key), child.value)


class Histogram(_Family[_Observed]):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames)

    def _new(self) -> _Observed:
        return _Observed(self.bounds)

    def observe(self, amount: float) -> None:
        self._unlabelled().observe(amount)

    def lines(self) -> Iterator[str]:
        yield from _header(self.name, self.documentation, "histogram")
        for key, child in self._children.items():
            labels = self._labels(key)
            total = 0
            for bound, count in zip(self.bounds, child.buckets, strict=True):
                total += count
                yield _sample(f"{self.name}_bucket", {**labels, "le": _number(bound)}, total)
            yield _sample(f"{self.name}_count", labels, total)
            yield _sample(f"{self.name}_sum", labels, child.value)
        yield from self._created()


def _header(name: str, documentation: str, kind: str) -> Iterator[str]:
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    yield f"# HELP {name} {doc}\n"
    yield f"# TYPE {name} {kind}\n"


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}\n"
    pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{pairs}}} {_number(value)}\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """A float as Prometheus (Go) writes it: `1.0`, `+Inf`, `1.7e+09`."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    # Go switches to an exponent sooner than Python does (only positive values matter here).
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


class Metrics:
    def __init__(self) -> None:
        self.events_in = Counter("hub_events_in", "Inbound events stored, by channel", ["channel"])
        self.duplicates = Counter("hub_events_duplicate", "Inbound events dropped as duplicates", ["channel"])
        self.replies_out = Counter("hub_replies_out", "Messages delivered, by channel", ["channel"])
        self.send_failures = Counter(
            "hub_send_failures", "Send attempts that failed, by channel and whether final", ["channel", "final"]
        )
        self.handling = Histogram(
            "hub_handling_seconds",
            "Time from an event's arrival to the end of its handling",
            ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.inbox_backlog = Gauge("hub_inbox_backlog", "Inbox events not yet handled")
        self.outbox_backlog = Gauge("hub_outbox_backlog", "Outbox messages not yet sent")
        self.jobs = Gauge("hub_jobs", "Jobs by state", ["state"])
        self.api_messages = Counter(
            "hub_api_messages", "Delivery API requests by answer (queued, invalid, ...)", ["status"]
        )
        self._families: list[Counter | Gauge | Histogram] = [
            self.events_in,
            self.duplicates,
            self.replies_out,
            self.send_failures,
            self.handling,
            self.inbox_backlog,
            self.outbox_backlog,
            self.jobs,
            self.api_messages,
        ]

    def render(self) -> bytes:
        return "".join(line for family in self._families for line in family.lines()).encode("utf-8")
