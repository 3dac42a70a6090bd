"""The hub's lifecycle: each component's start and stop as one `cleanup_ctx` generator.

They start in the order listed and stop in the reverse: storage, channels, outbox and jobs,
models, dispatcher, housekeeping. Shutdown first stops the channels' input (`stop_input`, an
`on_shutdown` hook); the channels are closed only after the outbox's last sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from hub.storage.migrate import migrate
from hub.storage.retention import prune

if TYPE_CHECKING:
    from hub.app import Hub

log = logging.getLogger("hub.app")

Ctx = Callable[[web.Application], AsyncIterator[None]]


def lifecycle(hub: Hub) -> list[Ctx]:
    async def storage_ctx(_: web.Application) -> AsyncIterator[None]:
        await migrate(hub.db)
        await hub.db.start()
        await hub.personas.sync(hub.settings.personas)
        await hub.web_events.start()
        yield
        await hub.web_events.stop()
        await hub.db.close()
        log.info("event=stopped holder=%s", hub.holder)

    async def channels_ctx(_: web.Application) -> AsyncIterator[None]:
        hub.dispatcher.open()
        for ch in hub.channels.values():
            await ch.start()
        yield
        # Their input stopped first (stop_input); closed only now, after the outbox's last sends.
        for ch in hub.channels.values():
            try:
                await ch.close()
            except Exception:
                log.exception("event=channel_close_failed channel=%s", ch.name)

    async def delivery_ctx(_: web.Application) -> AsyncIterator[None]:
        # On SQLite this process is the database's only user: leases left by a killed run are its own.
        await hub.outbox.start(release_all=hub.db.is_sqlite)
        await hub.jobs.start()
        yield
        # Sends under way get a short grace; what does not finish resumes after restart.
        await asyncio.gather(hub.jobs.stop(grace_s=2.0), hub.outbox.stop(grace_s=2.0))

    async def models_ctx(_: web.Application) -> AsyncIterator[None]:
        if hub.models is not None:
            await hub.models.start()
        yield
        if hub.models is not None:
            await hub.models.stop()

    async def dispatcher_ctx(_: web.Application) -> AsyncIterator[None]:
        await hub.dispatcher.start()
        log.info("event=started holder=%s channels=%s", hub.holder, ",".join(hub.channels))
        yield
        await hub.dispatcher.stop(grace_s=3.0)

    async def housekeeping_ctx(_: web.Application) -> AsyncIterator[None]:
        hub.background.append(asyncio.create_task(_housekeeping(hub), name="housekeeping"))
        yield
        for t in hub.background:
            t.cancel()
        await asyncio.gather(*hub.background, return_exceptions=True)

    return [storage_ctx, channels_ctx, delivery_ctx, models_ctx, dispatcher_ctx, housekeeping_ctx]


async def stop_input(hub: Hub, _: web.Application) -> None:
    """First step of shutdown: channels stop taking input, open streams end."""
    for ch in hub.channels.values():
        try:
            await ch.stop()
        except Exception:
            log.exception("event=channel_stop_failed channel=%s", ch.name)


async def _housekeeping(hub: Hub) -> None:
    """Expire stored media, old web messages and handled rows, hourly."""
    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("media", hub.media.expire),
        ("web_events", hub.web_events.expire),
        ("access", hub.access.housekeeping),
        ("prune", lambda: prune(hub.db, hub.settings.database.retention_days)),
    ]
    while True:
        for name, step in steps:
            # One failing step (a media file that will not go) must not stop the others.
            try:
                result = await step()
                if name == "media" and result:
                    log.info("event=media_expired count=%s", result)
            except Exception:
                log.exception("event=housekeeping_failed step=%s", name)
        await asyncio.sleep(3600)
