"""Spans of time as a person reads them, in the chat's language: `3 分钟后`, `in 3 minutes`."""

from __future__ import annotations

from datetime import datetime, timedelta

from hub.i18n import Texts
from hub.storage.db import utcnow


def _units(s: int, t: Texts) -> str:
    """A whole number of seconds in its largest unit (and the minutes under an hour)."""
    if s >= 86400:
        return t.plural("%(n)s day", "%(n)s days", s // 86400)
    if s >= 3600:
        hours = t.plural("%(n)s hour", "%(n)s hours", s // 3600)
        minutes = s % 3600 // 60
        if not minutes:
            return hours
        return t("%(hours)s %(minutes)s", hours=hours, minutes=t.plural("%(n)s minute", "%(n)s minutes", minutes))
    if s >= 60:
        return t.plural("%(n)s minute", "%(n)s minutes", s // 60)
    return t.plural("%(n)s second", "%(n)s seconds", s)


def describe_wait(seconds: float, t: Texts) -> str:
    """How long until something, rounded up: `5 hours 12 minutes`, `12 minutes`, `40 seconds`."""
    s = max(0, int(seconds + 0.999))
    if 60 <= s < 3600:
        s = (s + 59) // 60 * 60
    return _units(s, t)


def within(seconds: float, t: Texts) -> str:
    """`in 3 minutes` / `3 分钟后`."""
    return t("in %(span)s", span=describe_wait(seconds, t))


def duration(d: timedelta, t: Texts) -> str:
    """A span as a job notice says it: seconds under two minutes, else minutes."""
    s = round(d.total_seconds())
    if s < 120:
        return t.plural("%(n)s second", "%(n)s seconds", s)
    return t.plural("%(n)s minute", "%(n)s minutes", round(s / 60))


def ago(at: datetime, t: Texts) -> str:
    """`40 seconds ago`, `3 minutes ago`, `2 hours ago`, `5 days ago`: rounded down."""
    s = max(0, int((utcnow() - at).total_seconds()))
    if s >= 86400:
        s -= s % 86400
    elif s >= 3600:
        s -= s % 3600
    elif s >= 60:
        s -= s % 60
    return t("%(span)s ago", span=_units(s, t))
