"""Pruning what is kept only for a while: handled events, sent messages, delivered web events, audit.

Run hourly by every process; on PostgreSQL an advisory lock lets one process of the cluster
prune at a time (the others skip that round).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import ColumnElement, Table, and_, delete, or_, select, text

from hub.storage.db import Database, utcnow
from hub.storage.models import audit, inbox, outbox, web_events

log = logging.getLogger("hub.storage")

# The inbox is the dedupe window (DESIGN.md): a platform retry within a week must still be
# recognised, whatever the retention says.
MIN_INBOX_DAYS = 7
_PRUNE_LOCK = 0x7072756E65  # "prune" in ASCII


async def prune(db: Database, retention_days: int, *, batch: int = 5000) -> dict[str, int] | None:
    """Delete rows older than the retention; how many per table, or None when another process
    of the cluster is pruning now.

    Deletes go `batch` rows per transaction, so a first prune of a large database never holds
    SQLite's one write lock (and with it every webhook's insert) for long.
    """
    now = utcnow()
    cutoff = now - timedelta(days=retention_days)
    inbox_cutoff = now - timedelta(days=max(retention_days, MIN_INBOX_DAYS))
    targets: dict[str, tuple[Table, ColumnElement[bool]]] = {
        "inbox": (inbox, and_(inbox.c.status.in_(("done", "failed")), inbox.c.handled_at < inbox_cutoff)),
        # Failed messages go too (their reason is kept as long as a sent one's record); a
        # message still waiting for its chat stays, whatever its age.
        "outbox": (
            outbox,
            or_(
                and_(outbox.c.status == "sent", outbox.c.sent_at < cutoff),
                and_(outbox.c.status == "failed", outbox.c.created_at < cutoff),
            ),
        ),
        "web_events": (web_events, and_(web_events.c.delivered_at.is_not(None), web_events.c.created_at < cutoff)),
        "audit": (audit, audit.c.at < cutoff),
    }
    async with db.engine.connect() as lock:
        if not db.is_sqlite:
            got = (await lock.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PRUNE_LOCK})).scalar()
            await lock.commit()
            if not got:
                return None
        try:
            counts = {name: await _prune_table(db, table, cond, batch) for name, (table, cond) in targets.items()}
        finally:
            if not db.is_sqlite:
                await lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PRUNE_LOCK})
                await lock.commit()
    if any(counts.values()):
        log.info("event=pruned %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


async def _prune_table(db: Database, table: Table, cond: ColumnElement[bool], batch: int) -> int:
    total = 0
    while True:
        ids = select(table.c.id).where(cond).limit(batch).scalar_subquery()
        async with db.engine.begin() as conn:
            n = (await conn.execute(delete(table).where(table.c.id.in_(ids)))).rowcount
        total += n
        if n < batch:
            return total
