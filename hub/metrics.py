"""Prometheus metrics, on a registry owned by the app (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("hub_events_in", "Inbound events stored, by channel", ["channel"], registry=r)
        self.duplicates = Counter(
            "hub_events_duplicate", "Inbound events dropped as duplicates", ["channel"], registry=r
        )
        self.replies_out = Counter("hub_replies_out", "Messages delivered, by channel", ["channel"], registry=r)
        self.send_failures = Counter(
            "hub_send_failures",
            "Send attempts that failed, by channel and whether final",
            ["channel", "final"],
            registry=r,
        )
        self.handling = Histogram(
            "hub_handling_seconds",
            "Time from an event's arrival to the end of its handling",
            ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.inbox_backlog = Gauge("hub_inbox_backlog", "Inbox events not yet handled", registry=r)
        self.outbox_backlog = Gauge("hub_outbox_backlog", "Outbox messages not yet sent", registry=r)
        self.jobs = Gauge("hub_jobs", "Jobs by state", ["state"], registry=r)
        self.api_messages = Counter(
            "hub_api_messages", "Delivery API requests by answer (queued, invalid, ...)", ["status"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
