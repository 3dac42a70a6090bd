"""Pruning what is kept only for a while: handled events, sent messages, delivered web events, audit.

Run hourly by every process; on PostgreSQL a transaction-level advisory lock lets one process
of the cluster prune at a time (the others skip that round), and the lock ends with the commit.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, text

from hub.storage.db import Database, utcnow
from hub.storage.models import audit, inbox, outbox, web_events

log = logging.getLogger("hub.storage")

# The inbox is the dedupe window (DESIGN.md): a platform retry within a week must still be
# recognised, whatever the retention says.
MIN_INBOX_DAYS = 7
_PRUNE_LOCK = 0x7072756E65  # "prune" in ASCII


async def prune(db: Database, retention_days: int) -> dict[str, int] | None:
    """Delete rows older than the retention; how many per table, or None when another process
    of the cluster is pruning now."""
    now = utcnow()
    cutoff = now - timedelta(days=retention_days)
    inbox_cutoff = now - timedelta(days=max(retention_days, MIN_INBOX_DAYS))
    async with db.engine.begin() as conn:
        if not db.is_sqlite:
            got = (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _PRUNE_LOCK})).scalar()
            if not got:
                return None
        counts = {
            "inbox": (
                await conn.execute(
                    delete(inbox).where(inbox.c.status.in_(("done", "failed")), inbox.c.handled_at < inbox_cutoff)
                )
            ).rowcount,
            "outbox": (
                await conn.execute(delete(outbox).where(outbox.c.status == "sent", outbox.c.sent_at < cutoff))
            ).rowcount,
            "web_events": (
                await conn.execute(
                    delete(web_events).where(web_events.c.delivered_at.is_not(None), web_events.c.created_at < cutoff)
                )
            ).rowcount,
            "audit": (await conn.execute(delete(audit).where(audit.c.at < cutoff))).rowcount,
        }
    if any(counts.values()):
        log.info("event=pruned %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts
