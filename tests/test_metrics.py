"""hub/metrics.py writes what the Prometheus client library writes for the same counts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as RefCounter
from prometheus_client import Gauge as RefGauge
from prometheus_client import Histogram as RefHistogram

from hub.metrics import Counter, Gauge, Histogram, Metrics

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def reference() -> tuple[CollectorRegistry, dict[str, RefCounter | RefGauge | RefHistogram]]:
    """The hub's metrics declared with the client library, as they were before."""
    r = CollectorRegistry()
    metrics: dict[str, RefCounter | RefGauge | RefHistogram] = {
        "events_in": RefCounter("hub_events_in", "Inbound events stored, by channel", ["channel"], registry=r),
        "duplicates": RefCounter(
            "hub_events_duplicate", "Inbound events dropped as duplicates", ["channel"], registry=r
        ),
        "replies_out": RefCounter("hub_replies_out", "Messages delivered, by channel", ["channel"], registry=r),
        "send_failures": RefCounter(
            "hub_send_failures",
            "Send attempts that failed, by channel and whether final",
            ["channel", "final"],
            registry=r,
        ),
        "handling": RefHistogram(
            "hub_handling_seconds",
            "Time from an event's arrival to the end of its handling",
            ["channel"],
            buckets=BUCKETS,
            registry=r,
        ),
        "inbox_backlog": RefGauge("hub_inbox_backlog", "Inbox events not yet handled", registry=r),
        "outbox_backlog": RefGauge("hub_outbox_backlog", "Outbox messages not yet sent", registry=r),
        "jobs": RefGauge("hub_jobs", "Jobs by state", ["state"], registry=r),
        "api_messages": RefCounter(
            "hub_api_messages", "Delivery API requests by answer (queued, invalid, ...)", ["status"], registry=r
        ),
    }
    return r, metrics


def same_work(m: dict[str, Any]) -> None:
    m["events_in"].labels("web").inc()
    m["events_in"].labels('odd"na\\me\n').inc(3)
    m["duplicates"].labels(channel="telegram").inc()
    m["send_failures"].labels("qq", "yes").inc()
    m["send_failures"].labels(channel="qq", final="no").inc(2)
    for seconds in (0.005, 0.3, 1, 119.9, 500, 12345678.5):
        m["handling"].labels("web").observe(seconds)
    m["handling"].labels("onebot").observe(0.0)
    m["inbox_backlog"].set(2)
    m["jobs"].labels("done").set(7)
    m["jobs"].labels(state="queued").set(0.5)
    m["api_messages"].labels(status="queued").inc()


def without_created_values(text: str) -> str:
    # When a series was created differs by microseconds between the two; its line must not.
    return re.sub(r"^(\w+_created(\{[^}]*\})?) \S+$", r"\1 T", text, flags=re.M)


def test_the_text_is_the_client_librarys() -> None:
    registry, ref = reference()
    same_work(dict(ref))
    ours = Metrics()
    same_work(vars(ours))
    expected = generate_latest(registry).decode()
    assert "hub_events_in_created" in expected and "hub_handling_seconds_bucket" in expected
    assert without_created_values(ours.render().decode()) == without_created_values(expected)


def test_an_idle_hub_lists_every_metric_with_no_series() -> None:
    registry, _ = reference()
    assert Metrics().render() == generate_latest(registry)


def test_labels_are_checked_as_the_client_library_checks_them() -> None:
    c = Counter("c", "doc", ["a", "b"])
    with pytest.raises(ValueError):
        c.labels("x")
    with pytest.raises(ValueError):
        c.labels("x", b="y")
    with pytest.raises(ValueError):
        c.labels(a="x", c="y")
    with pytest.raises(ValueError):
        c.inc()  # a labelled metric counts only through .labels()
    with pytest.raises(ValueError):
        c.labels("x", "y").inc(-1)
    with pytest.raises(ValueError):
        Gauge("g", "doc").labels("x")
    assert c.labels(1, 2) is c.labels(a="1", b="2")  # values are strings, one series each


def test_an_unlabelled_histogram_and_gauge() -> None:
    h = Histogram("h", "doc", buckets=(1, 2))
    h.observe(1.5)
    g = Gauge("g", "doc")
    g.inc(3)
    g.dec()
    text = "".join([*h.lines(), *g.lines()])
    assert 'h_bucket{le="1.0"} 0.0\nh_bucket{le="2.0"} 1.0\nh_bucket{le="+Inf"} 1.0\n' in text
    assert "h_count 1.0\nh_sum 1.5\n" in text
    assert "g 2.0\n" in text
