"""The jobs table: long generation jobs, claimed with SKIP LOCKED and a lease, moved by fenced updates.

Every change a worker makes is conditioned on it still holding the job (`holder`) and on the
state it expects, so a process that lost its lease (it stalled, another took over) cannot
overwrite newer work. Repositories return frozen dataclasses; rows never leave this module.
"""

from __future__ import annotations

import builtins
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ClauseElement, ColumnElement, case, column, func, literal, or_, select, update, values
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.events import ChatRef
from hub.storage.db import Database, utcnow
from hub.storage.models import jobs
from hub.storage.outbox import NewMessage, enqueue_in

# queued → submitted → running → succeeded → delivered, or failed / timed_out / cancelled.
QUEUED, SUBMITTED, RUNNING, SUCCEEDED, DELIVERED = "queued", "submitted", "running", "succeeded", "delivered"
FAILED, TIMED_OUT, CANCELLED = "failed", "timed_out", "cancelled"
ACTIVE: tuple[str, ...] = (QUEUED, SUBMITTED, RUNNING, SUCCEEDED)
FINAL: tuple[str, ...] = (DELIVERED, FAILED, TIMED_OUT, CANCELLED)
STATES: tuple[str, ...] = ACTIVE + FINAL
# Before the provider has it: cancelling or the user's "same request" check still applies.
IN_FLIGHT: tuple[str, ...] = (QUEUED, SUBMITTED, RUNNING)

# Rows per UPDATE of a batch: well under either database's limit on bound parameters.
_ROWS_PER_STATEMENT = 500

JOB_ID_RE = re.compile(r"^[0-9a-f]{4,8}$")


def parse_job_id(text: str) -> str | None:
    """`7f3a` or `#7f3a` (any case) → `7f3a`; None when it is not a job id."""
    value = text.strip().lstrip("#").lower()
    return value if JOB_ID_RE.match(value) else None


@dataclass(frozen=True, slots=True)
class Job:
    """One row of `jobs`.

    `attempts` counts consecutive transient errors (for backoff); for an image job, which has
    no provider job to poll, it counts submissions instead. `retries` counts admin retries:
    each round gets fresh idempotency keys for what it sends.
    """

    id: str
    origin: str | None
    owner: str
    chat: ChatRef
    quote: str | None
    context: Mapping[str, Any]
    skill: str
    provider: str
    provider_job_id: str | None
    prompt: str
    state: str
    attempts: int
    next_poll_at: datetime | None
    holder: str | None
    lease_until: datetime | None
    result: Mapping[str, Any]
    error: str | None
    progress_noted: bool
    retries: int
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    deadline_at: datetime | None
    finished_at: datetime | None

    @property
    def ref(self) -> str:
        """How every answer names the job."""
        return f"#{self.id}"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def key(self, what: str) -> str:
        """The outbox idempotency key of one message about this job (per retry round)."""
        return f"job:{self.id}:{what}" if self.retries == 0 else f"job:{self.id}:{self.retries}:{what}"


# Every query that makes a Job selects the whole table (select(jobs), returning(*jobs.c)), so
# its rows are in this order; zipping the tuple is ten times cheaper than reading attributes.
_JOB_COLUMNS = tuple(jobs.c.keys())


def _job(r: Any) -> Job:
    kw = dict(zip(_JOB_COLUMNS, r, strict=True))
    kw.update(
        chat=ChatRef.parse(kw["chat"]),
        context=kw["context"] or {},
        result=kw["result"] or {},
        progress_noted=bool(kw["progress_noted"]),
    )
    return Job(**kw)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to create. `origin` (e.g. `"web:<event id>"`) makes creating it twice a no-op.

    `hold` creates it already leased by this process (an image being generated in-process).
    """

    owner: str
    chat: ChatRef
    skill: str
    provider: str
    prompt: str
    timeout_s: float
    origin: str | None = None
    quote: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    state: str = QUEUED
    hold: bool = False
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """A fenced update: applied only while this process holds the job in one of `expect`."""

    job_id: str
    expect: tuple[str, ...]
    values: Mapping[str, Any]
    release: bool = True
    # A message queued in the same transaction, only when the change applies: whoever reads
    # the notice then finds the job already in the state it tells of.
    notice: NewMessage | None = None


@dataclass(frozen=True, slots=True)
class NextPoll:
    """A `next_poll_at` `after_s` from when the change is written, and never past the job's
    deadline: a job that will not finish is told so on time. Being the same for every job of
    a provider, a tick's reschedules share it and so one statement."""

    after_s: float


def _not_past_deadline(at: ColumnElement[Any]) -> ColumnElement[Any]:
    return case((jobs.c.deadline_at < at, jobs.c.deadline_at), else_=at)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and bool(a == b)


class JobRepo:
    def __init__(self, db: Database, holder: str, lease_s: float = 30.0) -> None:
        self._db = db
        self.holder = holder
        self.lease_s = lease_s
        # Kinds are per repository: two repos on one database keep their own holder.
        self._k_change = f"jobs.change:{id(self)}"
        self._k_create = f"jobs.create:{id(self)}"
        db.writer.register(self._k_change, self._change_batch)
        db.writer.register(self._k_create, self._create_batch)

    # --- creating ---------------------------------------------------------------------------

    async def create(self, new: NewJob) -> tuple[Job, bool]:
        """Insert the job with a fresh short id; `(job, False)` when its origin already exists.

        Batched with the hub's other writes: on SQLite one commit serves many."""
        result: tuple[Job, bool] = await self._db.writer.submit(self._k_create, new)
        return result

    async def _create_batch(self, conn: AsyncConnection, items: builtins.list[NewJob]) -> Sequence[tuple[Job, bool]]:
        return [await self._create_one(conn, new) for new in items]

    async def _create_one(self, conn: AsyncConnection, new: NewJob) -> tuple[Job, bool]:
        now = utcnow()
        row: dict[str, Any] = {
            "origin": new.origin,
            "owner": new.owner,
            "chat": str(new.chat),
            "quote": new.quote,
            "context": dict(new.context),
            "skill": new.skill,
            "provider": new.provider,
            "prompt": new.prompt,
            "state": new.state,
            "attempts": new.attempts,
            "next_poll_at": now,
            "holder": self.holder if new.hold else None,
            "lease_until": self._db.now(self.lease_s) if new.hold else None,
            "progress_noted": False,
            "retries": 0,
            "created_at": now,
            "updated_at": now,
            "submitted_at": now if new.state != QUEUED else None,
            "deadline_at": now + timedelta(seconds=new.timeout_s),
        }
        for attempt in range(40):
            # 4 hex characters while they are easy to find free; longer as the table fills.
            row["id"] = secrets.token_hex(2 + min(2, attempt // 4))[: 4 + min(4, attempt // 4)]
            stmt = self._db.insert(jobs).values(row).on_conflict_do_nothing().returning(*jobs.c)
            created = (await conn.execute(stmt)).first()
            if created is not None:
                return _job(created), True
            if new.origin is not None:
                existing = (await conn.execute(select(jobs).where(jobs.c.origin == new.origin))).first()
                if existing is not None:
                    return _job(existing), False
        raise RuntimeError("could not find a free job id")

    # --- reading ----------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        async with self._db.engine.connect() as conn:
            r = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return _job(r) if r else None

    async def by_origin(self, origin: str) -> Job | None:
        async with self._db.engine.connect() as conn:
            r = (await conn.execute(select(jobs).where(jobs.c.origin == origin))).first()
        return _job(r) if r else None

    async def find_in_flight(self, owner: str, chat: ChatRef, skill: str, prompt: str) -> Job | None:
        """The same request (owner, chat, skill, prompt) still being made, if any."""
        q = (
            select(jobs)
            .where(
                jobs.c.owner == owner,
                jobs.c.chat == str(chat),
                jobs.c.skill == skill,
                jobs.c.prompt == prompt,
                jobs.c.state.in_(IN_FLIGHT),
            )
            .order_by(jobs.c.created_at.desc())
            .limit(1)
        )
        async with self._db.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        return _job(r) if r else None

    async def list(self, state: str | None = None, limit: int = 20, *, owner: str | None = None) -> builtins.list[Job]:
        """Newest first, optionally of one state or one owner."""
        q = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)
        if state is not None:
            q = q.where(jobs.c.state == state)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        async with self._db.engine.connect() as conn:
            return [_job(r) for r in await conn.execute(q)]

    async def counts(self) -> dict[str, int]:
        """How many jobs are in each state (every state present, zero when none)."""
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
            found = {r[0]: int(r[1]) for r in rows}
        return {s: found.get(s, 0) for s in STATES} | found

    async def failures_since(self, since: datetime) -> int:
        """Jobs that ended failed or timed out since a time."""
        async with self._db.engine.connect() as conn:
            q = select(func.count()).where(jobs.c.state.in_((FAILED, TIMED_OUT)), jobs.c.finished_at >= since)
            return int((await conn.execute(q)).scalar() or 0)

    # --- the poller's side ------------------------------------------------------------------

    async def claim_due(self, limit: int) -> builtins.list[Job]:
        """Lease up to `limit` active jobs whose next poll is due and whose lease is free.

        One statement (UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)
        RETURNING), so concurrent pollers on PostgreSQL never claim the same job; SQLite drops
        the locking clause and the single writer keeps it atomic. The (state, next_poll_at)
        index keeps the cost proportional to the due jobs.
        """
        if limit <= 0:
            return []
        now = utcnow()
        due = [
            jobs.c.state.in_(ACTIVE),
            jobs.c.next_poll_at <= now,
            # Leases by the database's clock: hosts whose clocks differ still agree on them.
            or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < self._db.now()),
        ]
        if self._db.is_sqlite:
            # A read first: an idle tick takes no write lock (SQLite has one writer for
            # everything). PostgreSQL locks rows, not the database: the claim alone is cheaper.
            async with self._db.engine.connect() as conn:
                if (await conn.execute(select(jobs.c.id).where(*due).limit(1))).first() is None:
                    return []
        sub = select(jobs.c.id).where(*due).order_by(jobs.c.next_poll_at).limit(limit).with_for_update(skip_locked=True)
        stmt = (
            update(jobs)
            .where(jobs.c.id.in_(sub.scalar_subquery()))
            .values(holder=self.holder, lease_until=self._db.now(self.lease_s))
            .returning(*jobs.c)
        )
        async with self._db.engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        return sorted((_job(r) for r in rows), key=lambda j: (j.next_poll_at or now, j.id))

    async def change(
        self,
        job_id: str,
        expect: Iterable[str],
        *,
        release: bool = True,
        notice: NewMessage | None = None,
        **values: Any,
    ) -> bool:
        """Apply a fenced update (batched with others); False when the job is no longer ours.

        `notice` is queued in the outbox in the same transaction, and only if the update applies.
        """
        change = Change(job_id, tuple(expect), values, release, notice)
        ok: bool = await self._db.writer.submit(self._k_change, change)
        return ok

    async def _change_batch(self, conn: AsyncConnection, items: builtins.list[Change]) -> Sequence[bool]:
        """One UPDATE per shape of change (columns set, states expected, released or kept),
        however many jobs share it: a tick's reschedules are one statement, not one per job."""
        now = utcnow()
        out = [False] * len(items)
        # A job changed twice in one batch: the second change sees the first (rounds in order).
        rounds: builtins.list[dict[tuple[Any, ...], builtins.list[int]]] = []
        seen: dict[str, int] = {}
        for n, c in enumerate(items):
            r = seen[c.job_id] = seen.get(c.job_id, -1) + 1
            if r == len(rounds):
                rounds.append({})
            # A SQL expression as a value has no equality to group by: it goes alone.
            alone = any(isinstance(v, ClauseElement) for v in c.values.values())
            polls = tuple(sorted(k for k, v in c.values.items() if isinstance(v, NextPoll)))
            shape = (n,) if alone else (tuple(sorted(c.values)), polls, c.expect, c.release)
            rounds[r].setdefault(shape, []).append(n)
        for groups in rounds:
            for members in groups.values():
                # Rows in id order, as far as one statement goes, for the order its locks are taken.
                members.sort(key=lambda n: items[n].job_id)
                for start in range(0, len(members), _ROWS_PER_STATEMENT):
                    chunk = members[start : start + _ROWS_PER_STATEMENT]
                    done = await self._apply(conn, [items[n] for n in chunk], now)
                    for n in chunk:
                        out[n] = items[n].job_id in done
        notices = [(c.notice, False) for n, c in enumerate(items) if out[n] and c.notice is not None]
        if notices:
            await enqueue_in(self._db, conn, notices)
        return out

    async def _apply(self, conn: AsyncConnection, changes: builtins.list[Change], now: datetime) -> set[str]:
        """One fenced UPDATE for changes of one shape; returns the ids it applied to."""
        first = changes[0]
        # The state through an expression, which no index serves: SQLite, having no statistics,
        # would otherwise walk the (state, next_poll_at) index over every job in those states
        # instead of looking the ids up.
        fence = [jobs.c.holder == self.holder, jobs.c.state.concat("").in_(first.expect)]

        def at(v: Any) -> Any:
            return now + timedelta(seconds=v.after_s) if isinstance(v, NextPoll) else v

        # A value shared by every change is bound once (a tick's reschedules share them all).
        same = {k: v for k, v in first.values.items() if all(_same(c.values[k], v) for c in changes[1:])}
        sets: dict[str, Any] = {}
        for k, v in same.items():
            sets[k] = _not_past_deadline(literal(at(v), jobs.c[k].type)) if isinstance(v, NextPoll) else v
        varying = [k for k in first.values if k not in same]
        if not varying:
            stmt = update(jobs).where(jobs.c.id.in_([c.job_id for c in changes]), *fence)
        else:
            # The rest come in as rows, joined by id. (Not cached: SQLAlchemy compiles a VALUES
            # list each time, which still costs less than a statement per job.)
            rows = (
                values(column("id", jobs.c.id.type), *(column(k, jobs.c[k].type) for k in varying), name="v")
                .data([(c.job_id, *(at(c.values[k]) for k in varying)) for c in changes])
                .cte("v")
            )
            for k in varying:
                sets[k] = _not_past_deadline(rows.c[k]) if isinstance(first.values[k], NextPoll) else rows.c[k]
            stmt = update(jobs).add_cte(rows).where(jobs.c.id == rows.c.id, *fence)
        sets["updated_at"] = now
        if first.release:
            sets.update(holder=None, lease_until=None)
        else:
            # Keeping the job: the change renews the lease too.
            sets.setdefault("lease_until", self._db.now(self.lease_s))
        result = await conn.execute(stmt.values(sets).returning(jobs.c.id))
        return set(result.scalars())

    async def renew(self, ids: Sequence[str]) -> None:
        """Extend this process's leases. Rows locked by a change in flight are skipped, never
        waited for (waiting could deadlock with it); that change renews them itself."""
        if not ids:
            return
        mine = (
            select(jobs.c.id)
            .where(jobs.c.id.in_(builtins.list(ids)), jobs.c.holder == self.holder)
            .with_for_update(skip_locked=True)
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(mine.scalar_subquery()))
                .values(lease_until=self._db.now(self.lease_s))
            )

    async def release(self, ids: Sequence[str] | None = None) -> None:
        """Give up leases now (at shutdown), so work resumes without waiting for them to expire.

        With `ids=None`, every lease in the table: for a process that knows it is the
        database's only user (SQLite at start), whatever is held was held by its earlier life.
        """
        cond: builtins.list[Any] = [jobs.c.holder.is_not(None)]
        if ids is not None:
            if not ids:
                return
            cond = [jobs.c.id.in_(builtins.list(ids)), jobs.c.holder == self.holder]
        async with self._db.engine.begin() as conn:
            await conn.execute(update(jobs).where(*cond).values(holder=None, lease_until=None))

    # --- the user's and the admin's side ----------------------------------------------------

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a job still in flight, whoever holds it; returns the job as it is now."""
        now = utcnow()
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_(IN_FLIGHT))
                .values(
                    state=CANCELLED, finished_at=now, updated_at=now, holder=None, lease_until=None, next_poll_at=None
                )
            )
            r = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return _job(r) if r else None

    async def retry(self, job_id: str, timeout_s: float) -> Job | None:
        """Start a failed, timed-out or cancelled job again from the beginning (a new round)."""
        now = utcnow()
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_((FAILED, TIMED_OUT, CANCELLED)))
                .values(
                    state=QUEUED,
                    provider_job_id=None,
                    attempts=0,
                    next_poll_at=now,
                    holder=None,
                    lease_until=None,
                    result=None,
                    error=None,
                    progress_noted=False,
                    retries=jobs.c.retries + 1,
                    updated_at=now,
                    submitted_at=None,
                    deadline_at=now + timedelta(seconds=timeout_s),
                    finished_at=None,
                )
            )
            r = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return _job(r) if r else None
