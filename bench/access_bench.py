"""What the access middlewares add to each message: policy, rate limit and quota, on SQLite.

Runs the three middlewares (as the router chains them) around a skill that does nothing, for
messages from many users at once, against a fresh SQLite database in a temporary directory.
Three settings: everything open with no limits (usage is still counted, one write per message),
a daily quota on the skill, and a private allowlist that must look the user up. Prints the
per-message time (p50, p99) and the messages per second for each.

    python bench/access_bench.py [--messages 2000] [--concurrency 50] [--users 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub.events import ChatRef, Event, Message, User  # noqa: E402
from hub.routing.access import AccessControl  # noqa: E402
from hub.routing.commands import CommandObject  # noqa: E402
from hub.routing.context import Context, ReplyStream  # noqa: E402
from hub.settings import AccessSettings, QuotasSettings  # noqa: E402
from hub.storage.admin import PairingRepo, QuotaRepo, UsageRepo  # noqa: E402
from hub.storage.chats import AuditRepo, ChatSettings, UserRepo  # noqa: E402
from hub.storage.db import Database  # noqa: E402
from hub.storage.migrate import migrate  # noqa: E402


class Silent:
    async def reply(self, message: Message, *, quote: bool = True) -> None:
        pass

    def stream(self) -> ReplyStream:
        raise NotImplementedError

    async def action(self, kind: str = "typing") -> None:
        pass


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def run(name: str, access: AccessSettings, quotas: QuotasSettings, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'hub.db'}")
        await migrate(db)
        await db.start()  # the batching writer, as the running hub has it
        users = UserRepo(db)
        for u in range(args.users):
            await users.set(f"telegram:{u}", allowed=True)
        control = AccessControl(
            access,
            quotas,
            users=users,
            pairing=PairingRepo(db),
            quota_overrides=QuotaRepo(db),
            usage=UsageRepo(db),
            audit=AuditRepo(db),
        )
        chain = [control.policy, control.rate, control.quota]

        async def skill(event: Event, ctx: Context) -> None:
            pass

        async def one(n: int) -> float:
            uid = str(n % args.users)
            event = Event(
                str(n), "telegram", ChatRef("telegram", "private", uid), User("telegram", uid), Message.of("/video x")
            )
            ctx = Context(event, CommandObject("video", "x"), ChatSettings(str(event.chat)), False, Silent(), "video")

            async def call(i: int, e: Event, c: Context) -> None:
                if i == len(chain):
                    await skill(e, c)
                else:
                    await chain[i](lambda e2, c2: call(i + 1, e2, c2), e, c)

            started = time.perf_counter()
            await call(0, event, ctx)
            return time.perf_counter() - started

        slots = asyncio.Semaphore(args.concurrency)

        async def bounded(n: int) -> float:
            async with slots:
                return await one(n)

        await asyncio.gather(*(bounded(n) for n in range(100)))  # warm-up
        started = time.perf_counter()
        times = await asyncio.gather(*(bounded(n) for n in range(args.messages)))
        elapsed = time.perf_counter() - started
        await db.close()
    print(
        f"{name:<28} p50 {statistics.median(times) * 1000:6.2f} ms  p99 {percentile(list(times), 99) * 1000:6.2f} ms"
        f"  {args.messages / elapsed:7.0f} messages/s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.messages} messages, {args.concurrency} at a time, {args.users} users, SQLite")
    await run("open, no limits", AccessSettings(), QuotasSettings(), args)
    await run("quota video = 1000/day", AccessSettings(), QuotasSettings(video=1000), args)
    await run("allowlist + quota", AccessSettings(private="allowlist"), QuotasSettings(video=1000), args)


if __name__ == "__main__":
    asyncio.run(main())
