"""The outbox: every outgoing message, claimed with a lease, sent with retries, marked sent once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.events import ChatRef, Message, message_from_list, message_to_list
from hub.storage.db import Database, utcnow
from hub.storage.models import outbox

# The advisory lock that makes outbox claims take turns on PostgreSQL ("outbox" in ASCII).
_CLAIM_LOCK = 0x6F7574626F78


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to queue. `idempotency_key` makes a second enqueue of it a no-op."""

    target: ChatRef
    message: Message
    quote: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    origin: str = "reply"
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    target: ChatRef
    message: Message
    quote: str | None
    context: Mapping[str, Any]
    origin: str
    attempts: int
    progress: int
    idempotency_key: str | None
    created_at: datetime


def _row_to_item(r: Any) -> OutboxItem:
    return OutboxItem(
        id=r.id,
        target=ChatRef.parse(r.target),
        message=message_from_list(r.message),
        quote=r.quote,
        context=r.context or {},
        origin=r.origin,
        attempts=r.attempts,
        progress=r.progress,
        idempotency_key=r.idempotency_key,
        created_at=r.created_at,
    )


async def enqueue_in(db: Database, conn: AsyncConnection, items: list[tuple[NewMessage, bool]]) -> list[int]:
    """Insert messages on `conn`, in its transaction: what a job's state change queues with it."""
    return await conn.run_sync(lambda sync: enqueue_sync(db, sync, items))


def enqueue_sync(db: Database, conn: Connection, items: list[tuple[NewMessage, bool]]) -> list[int]:
    """`enqueue_in` on a synchronous connection (the batch writer's)."""
    now = utcnow()
    rows = [
        {
            "target": str(m.target),
            "message": message_to_list(m.message),
            "quote": m.quote,
            "context": dict(m.context),
            "origin": m.origin,
            "status": "sent" if sent else "pending",
            "attempts": 0,
            "progress": 0,
            "idempotency_key": m.idempotency_key,
            "created_at": now,
            "sent_at": now if sent else None,
        }
        for m, sent in items
    ]
    ids: list[int | None] = [None] * len(rows)
    keyed = [i for i, r in enumerate(rows) if r["idempotency_key"] is not None]
    unkeyed = [i for i, r in enumerate(rows) if r["idempotency_key"] is None]
    # Due by the database's clock, the one claims compare it with.
    due = db.now()
    if unkeyed:
        stmt = db.insert(outbox).values(next_attempt_at=due).returning(outbox.c.id)
        for i in unkeyed:
            ids[i] = conn.execute(stmt.values(rows[i])).scalar_one()
    if keyed:
        stmt = _keyed_insert(db)
        by_key: dict[str, int] = {}
        batch = [rows[i] for i in keyed]
        result = conn.execute(stmt, batch[0]) if len(batch) == 1 else conn.execute(stmt, batch)
        for r in result:
            by_key[r.idempotency_key] = r.id
        keys: list[str] = [str(rows[i]["idempotency_key"]) for i in keyed]
        missing = [k for k in keys if k not in by_key]
        if missing:
            q = select(outbox.c.id, outbox.c.idempotency_key).where(outbox.c.idempotency_key.in_(missing))
            for r in conn.execute(q):
                by_key[r.idempotency_key] = r.id
        for i, key in zip(keyed, keys, strict=True):
            ids[i] = by_key[key]
    return [int(i) for i in ids if i is not None]


# The keyed insert every reply takes, by dialect: a statement kept is compiled once.
_KEYED_INSERTS: dict[bool, Any] = {}


def _keyed_insert(db: Database) -> Any:
    stmt = _KEYED_INSERTS.get(db.is_sqlite)
    if stmt is None:
        stmt = _KEYED_INSERTS[db.is_sqlite] = (
            db.insert(outbox)
            # Due by the database's clock, the one claims compare it with.
            .values(next_attempt_at=db.now())
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(outbox.c.id, outbox.c.idempotency_key)
        )
    return stmt


class OutboxRepo:
    def __init__(self, db: Database, holder: str, lease_s: float = 30.0) -> None:
        self._db = db
        self.holder = holder
        self.lease_s = lease_s
        # Kinds are per repository: two repos on one database keep their own settings.
        self._k_enqueue = f"outbox.enqueue:{id(self)}"
        self._k_sent = f"outbox.sent:{id(self)}"
        self._k_progress = f"outbox.progress:{id(self)}"
        self._k_claim = f"outbox.claim:{id(self)}"
        self._k_release = f"outbox.release:{id(self)}"
        # In this order in a batch's transaction: a claim sees the messages queued and the
        # marks made beside it.
        db.writer.register_sync(self._k_enqueue, self._enqueue_batch)
        db.writer.register_sync(self._k_sent, self._sent_batch)
        db.writer.register_sync(self._k_progress, self._progress_batch)
        db.writer.register_sync(self._k_release, self._release_batch)
        db.writer.register_sync(self._k_claim, self._claim_batch)
        # Built once: a statement kept is compiled (and its cache key computed) once, not per batch.
        self._claim_stmt = self._build_claim()
        self._sent_stmt = self._build_sent()
        self._progress_stmt = (
            update(outbox)
            .where(outbox.c.id == bindparam("b_id"), outbox.c.status == "pending", outbox.c.holder == holder)
            .values(progress=bindparam("b_progress"))
        )
        self._release_stmt = (
            update(outbox)
            .where(outbox.c.target.in_(bindparam("b_targets", expanding=True)), outbox.c.status == "waiting")
            .values(status="pending", next_attempt_at=db.now(), holder=None, lease_until=None)
            .returning(outbox.c.id, outbox.c.target)
        )

    async def enqueue(self, msg: NewMessage, *, already_sent: bool = False) -> int:
        """Queue a message (batched); returns its id, or the existing id for a known key.

        `already_sent` records a message that went out directly (a live stream) so that
        nothing sends it again.
        """
        result: int = await self._db.writer.submit(self._k_enqueue, (msg, already_sent))
        return result

    def _enqueue_batch(self, conn: Connection, items: list[tuple[NewMessage, bool]]) -> Sequence[int]:
        return enqueue_sync(self._db, conn, items)

    async def claim_due(self, limit: int) -> list[OutboxItem]:
        """Lease up to `limit` due messages, keeping each chat's messages in order.

        A chat is skipped while any of its messages is leased (being sent) or an earlier one
        waits for a retry: at most one sender per chat, and nothing overtakes a message.
        """
        if self._db.is_sqlite:
            # SQLite has one writer: a claim of its own would wait for the batch writer's lock.
            items: list[OutboxItem] = await self._db.writer.submit(self._k_claim, limit)
            return items
        async with self._db.engine.begin() as conn:
            # Claims take turns over the cluster: a claim running beside another would not
            # see that one's leases yet and could start a second sender for the same chat.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CLAIM_LOCK})
            return await conn.run_sync(self._claim, limit)

    def _claim_batch(self, conn: Connection, limits: list[int]) -> Sequence[list[OutboxItem]]:
        return [self._claim(conn, limit) for limit in limits]

    def _claim(self, conn: Connection, limit: int) -> list[OutboxItem]:
        rows = conn.execute(self._claim_stmt, {"limit": limit}).all()
        items = [_row_to_item(r) for r in rows]
        items.sort(key=lambda i: i.id)
        return items

    def _build_claim(self) -> Any:
        now = self._db.now()
        earlier = outbox.alias("earlier")
        blocked = (
            select(earlier.c.id)
            .where(
                earlier.c.target == outbox.c.target,
                earlier.c.status == "pending",
                or_(
                    earlier.c.lease_until >= now,
                    and_(earlier.c.id < outbox.c.id, earlier.c.next_attempt_at > now),
                ),
            )
            .exists()
        )
        sub = (
            select(outbox.c.id)
            .where(
                outbox.c.status == "pending",
                outbox.c.next_attempt_at <= now,
                or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now),
                ~blocked,
            )
            .order_by(outbox.c.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        return (
            update(outbox)
            .where(outbox.c.id.in_(sub.scalar_subquery()))
            .values(holder=self.holder, lease_until=self._db.now(self.lease_s))
            .returning(*outbox.c)
        )

    async def mark_sent(self, item_id: int, sent_ids: Sequence[str] = ()) -> None:
        await self._db.writer.submit(self._k_sent, (item_id, list(sent_ids)))

    def _sent_batch(self, conn: Connection, items: list[tuple[int, list[str]]]) -> Sequence[None]:
        # One executemany for the batch: a statement per row costs a driver round trip each.
        now = utcnow()
        conn.execute(self._sent_stmt, [{"b_id": i, "b_sent": sent, "b_at": now} for i, sent in items])
        return [None] * len(items)

    def _build_sent(self) -> Any:
        # Fenced: only the holder, or anyone once no live lease is left (the send happened, and
        # recording it beats sending it again); never over another process's live lease.
        return (
            update(outbox)
            .where(
                outbox.c.id == bindparam("b_id"),
                outbox.c.status == "pending",
                or_(
                    outbox.c.holder == self.holder,
                    outbox.c.holder.is_(None),
                    outbox.c.lease_until < self._db.now(),
                ),
            )
            .values(
                status="sent",
                sent_at=bindparam("b_at", type_=outbox.c.sent_at.type),
                sent_ids=bindparam("b_sent", type_=outbox.c.sent_ids.type),
                holder=None,
                lease_until=None,
            )
        )

    async def set_progress(self, item_id: int, progress: int) -> None:
        """Record how many parts of a split message went out, so a retry skips them. Batched."""
        await self._db.writer.submit(self._k_progress, (item_id, progress))

    def _progress_batch(self, conn: Connection, items: list[tuple[int, int]]) -> Sequence[None]:
        conn.execute(self._progress_stmt, [{"b_id": item_id, "b_progress": n} for item_id, n in items])
        return [None] * len(items)

    async def renew(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        # Rows locked by a write in flight (marking them sent) are skipped, not waited for:
        # waiting could deadlock with that batch on PostgreSQL.
        mine = (
            select(outbox.c.id)
            .where(outbox.c.id.in_(list(ids)), outbox.c.holder == self.holder)
            .with_for_update(skip_locked=True)
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(mine.scalar_subquery()))
                .values(lease_until=self._db.now(self.lease_s))
            )

    async def release_all(self) -> None:
        """Drop every lease on pending rows: for a process that knows it is the database's only
        user (SQLite at start), whatever is held was held by its own earlier life."""
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(outbox)
                .where(outbox.c.status == "pending", outbox.c.holder.is_not(None))
                .values(holder=None, lease_until=None)
            )

    def _mine(self, item_id: int) -> tuple[Any, ...]:
        """The fence of every update a sender makes: its row, still pending, still leased to it."""
        return (outbox.c.id == item_id, outbox.c.status == "pending", outbox.c.holder == self.holder)

    async def mark_retry(
        self, item_id: int, *, attempts: int, error: str, delay_s: float = 0.0, next_at: datetime | None = None
    ) -> bool:
        """Schedule another try, `delay_s` from now by the database's clock (the one claims
        compare with) or at `next_at`; False when this process no longer holds the message."""
        due = next_at if next_at is not None else self._db.now(delay_s)
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(outbox)
                .where(*self._mine(item_id))
                .values(attempts=attempts, next_attempt_at=due, last_error=error[:2000], holder=None, lease_until=None)
            )
        return result.rowcount > 0

    async def release(self, ids: Sequence[int]) -> None:
        """Give back claimed rows this process will not send now, so they are claimed again at
        once instead of when their lease runs out."""
        if not ids:
            return
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(list(ids)), outbox.c.status == "pending", outbox.c.holder == self.holder)
                .values(holder=None, lease_until=None)
            )

    async def make_due(self, target_prefixes: Sequence[str]) -> int:
        """Pending messages to targets starting with one of the prefixes are due now; how many."""
        if not target_prefixes:
            return 0
        match = or_(*(outbox.c.target.startswith(p, autoescape=True) for p in target_prefixes))
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(outbox)
                .where(outbox.c.status == "pending", outbox.c.next_attempt_at > self._db.now(), match)
                .values(next_attempt_at=self._db.now())
            )
        return int(result.rowcount or 0)

    async def mark_failed(self, item_id: int, *, attempts: int, error: str) -> bool:
        """Give the message up; False when this process no longer holds it."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(outbox)
                .where(*self._mine(item_id))
                .values(status="failed", attempts=attempts, last_error=error[:2000], holder=None, lease_until=None)
            )
        return result.rowcount > 0

    async def mark_waiting(self, item_id: int, *, error: str) -> bool:
        """Park a message until its chat writes again (`release_waiting`); it keeps its progress.
        False when this process no longer holds it."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(outbox)
                .where(*self._mine(item_id))
                .values(status="waiting", last_error=error[:2000], holder=None, lease_until=None)
            )
        return result.rowcount > 0

    async def release_waiting(self, target: str) -> list[int]:
        """The chat wrote again: its waiting messages become due now. One UPDATE, so of two
        processes releasing the same chat only one gets each row. Batched: a burst of
        messages releases its chats in one statement."""
        ids: list[int] = await self._db.writer.submit(self._k_release, target)
        return ids

    def _release_batch(self, conn: Connection, targets: list[str]) -> Sequence[list[int]]:
        released: dict[str, list[int]] = {t: [] for t in targets}
        for r in conn.execute(self._release_stmt, {"b_targets": list(released)}):
            released[r.target].append(int(r.id))
        # A chat named twice in one batch gets its rows once (the first asker), like two UPDATEs would.
        out: list[list[int]] = []
        for t in targets:
            out.append(sorted(released.pop(t, [])))
        return out

    async def statuses(self, keys: Sequence[str]) -> dict[str, str]:
        """The status of the messages queued under these idempotency keys (known ones only)."""
        if not keys:
            return {}
        q = select(outbox.c.idempotency_key, outbox.c.status).where(outbox.c.idempotency_key.in_(list(keys)))
        async with self._db.engine.connect() as conn:
            return {str(r.idempotency_key): str(r.status) for r in await conn.execute(q)}

    async def backlog(self) -> int:
        async with self._db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).where(outbox.c.status == "pending"))).scalar() or 0)

    async def failures_since(self, since: datetime) -> int:
        async with self._db.engine.connect() as conn:
            q = select(func.count()).where(outbox.c.status == "failed", outbox.c.created_at >= since)
            return int((await conn.execute(q)).scalar() or 0)

    async def recent_sent_ids(self, target_prefix: str, limit: int) -> list[tuple[ChatRef, list[str]]]:
        """The platform ids of the newest `limit` messages sent to targets with this prefix, newest first."""
        q = (
            select(outbox.c.target, outbox.c.sent_ids)
            .where(outbox.c.status == "sent", outbox.c.target.startswith(target_prefix, autoescape=True))
            .order_by(outbox.c.id.desc())
            .limit(limit)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [(ChatRef.parse(r.target), [str(i) for i in r.sent_ids]) for r in rows if isinstance(r.sent_ids, list)]

    async def all_rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first: for tests and `/admin` listings."""
        async with self._db.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(select(outbox).order_by(outbox.c.id))]
