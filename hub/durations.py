"""Spans of time as a person reads them, in the three forms replies use."""

from __future__ import annotations

from datetime import datetime, timedelta

from hub.storage.db import utcnow


def describe_wait(seconds: float) -> str:
    """`5 h 12 min`, `12 min`, `40 s`: how long until something, rounded up."""
    s = max(0, int(seconds + 0.999))
    if s >= 3600:
        minutes = s % 3600 // 60
        return f"{s // 3600} h {minutes} min" if minutes else f"{s // 3600} h"
    if s >= 60:
        return f"{(s + 59) // 60} min"
    return f"{s} s"


def duration(d: timedelta) -> str:
    """A span as a job notice says it: seconds under two minutes, else minutes."""
    s = round(d.total_seconds())
    if s < 120:
        return f"{s} s"
    return f"{round(s / 60)} min"


def ago(at: datetime) -> str:
    """`40 s ago`, `3 min ago`, `2 h ago`, `5 d ago`: how long since `at`, rounded down."""
    s = max(0, int((utcnow() - at).total_seconds()))
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"
