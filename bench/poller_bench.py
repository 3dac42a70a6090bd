"""The job poller under load: N jobs in flight, 1 % of them due at each tick.

    python bench/poller_bench.py [--jobs 10000] [--due 0.01] [--ticks 50] [--database URL]

Each tick is the poller's real work: claim the due jobs (UPDATE … WHERE id IN (SELECT … FOR
UPDATE SKIP LOCKED LIMIT n) RETURNING, with a lease), poll each (an in-process provider that
answers "running" at once, so the figures are the hub's own cost, not a network's), and
reschedule each at the provider's interval. Prints wall time and CPU time per tick (this
process's, every thread: SQLite's own work counts, a PostgreSQL server's does not), the
statements a tick sends (the claim and the reschedule are one each however many jobs are due),
and the cost of an idle tick (nothing due), which stays flat however many jobs are in flight.

On PostgreSQL the benchmark's jobs are deleted before and after the run; other rows are left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import delete, event, update

from hub.delivery import Outbox
from hub.events import ChatRef
from hub.jobs.images import ImageJobs
from hub.jobs.results import JobDelivery
from hub.jobs.service import JobService
from hub.metrics import Metrics
from hub.providers.generation import Poll
from hub.storage.chats import ChatRepo
from hub.storage.db import Database, utcnow
from hub.storage.jobs import JobRepo
from hub.storage.media import MediaStore
from hub.storage.migrate import migrate
from hub.storage.models import jobs
from hub.storage.outbox import OutboxRepo


class RunningForever:
    """A video provider whose jobs are always still being made."""

    name = "hunyuan"
    media = "video"
    poll_interval_s = 3600.0
    timeout_s = 86400.0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def submit(self, prompt: str) -> str:
        return "p"

    async def poll(self, provider_job_id: str) -> Poll:
        return Poll("running")


async def fill(db: Database, n: int) -> list[str]:
    now = utcnow()
    later = now + timedelta(hours=1)
    chat = str(ChatRef("web", "private", "bench"))
    ids = [f"{i:08x}" for i in range(n)]
    rows = [
        {
            "id": job_id,
            "origin": f"bench:{job_id}",
            "owner": f"web:u{i % 500}",
            "chat": chat,
            "quote": None,
            "context": {},
            "skill": "video",
            "provider": "hunyuan",
            "provider_job_id": f"p{i}",
            "prompt": f"bench {i}",
            "state": "running",
            "attempts": 0,
            "next_poll_at": later,
            "progress_noted": True,
            "retries": 0,
            "created_at": now,
            "updated_at": now,
            "submitted_at": now,
            "deadline_at": now + timedelta(days=1),
        }
        for i, job_id in enumerate(ids)
    ]
    async with db.engine.begin() as conn:
        for start in range(0, n, 2000):
            await conn.execute(jobs.insert(), rows[start : start + 2000])
    return ids


async def clear(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(delete(jobs).where(jobs.c.origin.like("bench:%")))


async def make_due(db: Database, ids: list[str]) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(next_poll_at=utcnow() - timedelta(seconds=1)))


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite+aiosqlite:///{tmp}/bench.db"
        db = Database(url)
        await migrate(db)
        await db.start()
        metrics = Metrics()
        media = MediaStore(db, Path(tmp) / "media")
        outbox = Outbox(OutboxRepo(db, "bench"), media, {}, ChatRepo(db), metrics)
        per_tick = max(1, round(args.jobs * args.due))
        repo = JobRepo(db, "bench", 30.0)
        delivery = JobDelivery(repo, outbox, media)
        service = JobService(
            repo,
            delivery,
            ImageJobs(repo, delivery, media, None),
            metrics,
            providers={"video": RunningForever()},
            concurrency=per_tick,
            batch=per_tick,
        )
        await service.open()
        statements: Counter[str] = Counter()

        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements[statement.lstrip().split(None, 1)[0].upper()] += 1

        try:
            await clear(db)
            started = time.perf_counter()
            ids = await fill(db, args.jobs)
            filled = time.perf_counter() - started
            print(f"database: {url.split(':')[0]}; {args.jobs} jobs in flight (filled in {filled:.1f} s)")
            walls: list[float] = []
            cpus: list[float] = []
            idle_walls: list[float] = []
            per_tick_statements: list[Counter[str]] = []
            for tick in range(args.ticks + 3):
                await make_due(db, random.sample(ids, per_tick))
                statements.clear()
                event.listen(db.engine.sync_engine, "before_cursor_execute", count)
                w0, c0 = time.perf_counter(), time.process_time()
                claimed = await service.tick()
                await service.drain()
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                event.remove(db.engine.sync_engine, "before_cursor_execute", count)
                per_tick_statements.append(Counter(statements))
                assert claimed == per_tick, (claimed, per_tick)
                w0 = time.perf_counter()
                assert await service.tick() == 0
                idle = time.perf_counter() - w0
                if tick >= 3:  # the first ticks warm the statement caches
                    walls.append(wall)
                    cpus.append(cpu)
                    idle_walls.append(idle)
            walls_ms = sorted(w * 1000 for w in walls)
            print(f"due per tick: {per_tick} ({args.due:.1%}); ticks measured: {len(walls)}")
            print(
                f"time per tick: median {statistics.median(walls_ms):.1f} ms, "
                f"p95 {walls_ms[int(len(walls_ms) * 0.95) - 1]:.1f} ms, max {walls_ms[-1]:.1f} ms"
            )
            cpu_ms, wall_ms = statistics.mean(cpus) * 1000, statistics.median(walls_ms)
            share = cpu_ms / (statistics.mean(walls) * 1000)
            print(f"CPU per tick: mean {cpu_ms:.1f} ms ({share:.0%} of its wall time)")
            print(f"per due job: {wall_ms / per_tick:.2f} ms wall, {cpu_ms / per_tick:.2f} ms CPU")
            sent = per_tick_statements[-1]
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(sent.items()))
            print(f"statements per tick: {sum(sent.values())} ({kinds}; BEGIN and COMMIT not counted)")
            print(f"idle tick (nothing due): median {statistics.median(idle_walls) * 1000:.2f} ms")
        finally:
            with contextlib.suppress(Exception):
                await clear(db)
            await service.stop()
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--due", type=float, default=0.01, help="fraction of the jobs due at each tick")
    parser.add_argument("--ticks", type=int, default=50)
    parser.add_argument("--database", help="a database URL (default: a temporary SQLite file)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
