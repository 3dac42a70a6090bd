"""Wiring: settings → storage → channels → router → scheduler → aiohttp app.

This is the only module that constructs the hub's objects; everything else receives its
collaborators in `__init__`. A platform module (and its SDK) is imported only when its
channel is enabled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from hub.channels.base import Channel
from hub.channels.web import WebChannel
from hub.delivery import Outbox
from hub.events import Event
from hub.http import ServerRoutes, error_middleware
from hub.inbound import Dispatcher, EventReplier, LiveSink
from hub.metrics import Metrics
from hub.people import People
from hub.router import Router
from hub.settings import Settings
from hub.skills.base import Replier
from hub.skills.chat import NoModelChat
from hub.storage.chats import AuditRepo, ChatRepo, KeyValueRepo, UserRepo
from hub.storage.db import Database
from hub.storage.inbox import InboxRepo
from hub.storage.media import MediaStore
from hub.storage.migrate import migrate
from hub.storage.outbox import OutboxRepo
from hub.storage.web_events import WebEventRepo

log = logging.getLogger("hub.app")


@dataclass
class Hub:
    """The constructed parts, kept on the app under HUB_KEY for the lifecycle and for tests."""

    settings: Settings
    holder: str
    metrics: Metrics
    db: Database
    inbox: InboxRepo
    outbox_repo: OutboxRepo
    chats: ChatRepo
    users: UserRepo
    audit: AuditRepo
    kv: KeyValueRepo
    media: MediaStore
    web_events: WebEventRepo
    people: People
    outbox: Outbox
    router: Router
    dispatcher: Dispatcher
    channels: dict[str, Channel] = field(default_factory=dict)
    background: list[asyncio.Task[None]] = field(default_factory=list)


HUB_KEY = web.AppKey("hub", Hub)


def instance_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(3)}"


def build_app(
    settings: Settings,
    *,
    extra_channels: Sequence[Channel] = (),
    lease_s: float = 30.0,
    recovery_interval_s: float = 10.0,
) -> web.Application:
    """Build the whole hub as an aiohttp application; nothing runs until it is started.

    `extra_channels` lets a test (or an embedding program) add channels of its own.
    """
    holder = instance_id()
    metrics = Metrics()
    db = Database(settings.database_url)
    inbox = InboxRepo(db, holder, lease_s)
    outbox_repo = OutboxRepo(db, holder, lease_s)
    chats = ChatRepo(db)
    users = UserRepo(db)
    audit = AuditRepo(db)
    kv = KeyValueRepo(db)
    media = MediaStore(db, settings.media_dir, settings.media_retention_days)
    web_events = WebEventRepo(db)
    people = People(users, settings.admins)
    channels: dict[str, Channel] = {}
    outbox = Outbox(outbox_repo, media, channels, chats, metrics)

    router = Router(
        aliases=settings.commands.aliases,
        bot_names=lambda name: channels[name].bot_names if name in channels else (),
        chat_settings=chats.get,
        is_admin=people.is_admin,
        is_banned=people.is_banned,
    )

    def make_replier(event: Event, live: LiveSink | None) -> Replier:
        return EventReplier(event, outbox, channels.get(event.channel), live)

    dispatcher = Dispatcher(
        inbox,
        router.handle,
        make_replier,
        metrics,
        recover_all_at_start=db.is_sqlite,
        recovery_interval_s=recovery_interval_s,
    )

    # --- channels: each platform module is imported only when enabled ---------------------
    if settings.web.enabled:
        channels["web"] = WebChannel(
            settings.web, events=web_events, media=media, submit_and_wait=dispatcher.submit_and_wait
        )
    for ch in extra_channels:
        channels[ch.name] = ch

    # --- skills ----------------------------------------------------------------------------
    router.register("help", router.help_skill, description="list the commands you may use")
    router.set_fallback(NoModelChat())

    hub = Hub(
        settings=settings,
        holder=holder,
        metrics=metrics,
        db=db,
        inbox=inbox,
        outbox_repo=outbox_repo,
        chats=chats,
        users=users,
        audit=audit,
        kv=kv,
        media=media,
        web_events=web_events,
        people=people,
        outbox=outbox,
        router=router,
        dispatcher=dispatcher,
        channels=channels,
    )

    app = web.Application(client_max_size=settings.http.max_body_bytes, middlewares=[error_middleware])
    app[HUB_KEY] = hub
    server = ServerRoutes(db=db, metrics=metrics, media=media, inbox=inbox, outbox=outbox_repo, channels=channels)
    app.add_routes(server.routes())
    for ch in channels.values():
        app.add_routes(ch.routes())
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_stop_input)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    hub = app[HUB_KEY]
    await migrate(hub.db)
    await hub.db.start()
    await hub.web_events.start()
    for ch in hub.channels.values():
        await ch.start()
    await hub.outbox.start()
    await hub.dispatcher.start()
    hub.background.append(asyncio.create_task(_housekeeping(hub), name="housekeeping"))
    log.info("event=started holder=%s channels=%s", hub.holder, ",".join(hub.channels))
    yield
    for t in hub.background:
        t.cancel()
    await asyncio.gather(*hub.background, return_exceptions=True)
    await hub.dispatcher.stop(grace_s=3.0)
    await hub.outbox.stop(grace_s=3.0)
    await hub.web_events.stop()
    await hub.db.close()
    log.info("event=stopped holder=%s", hub.holder)


async def _stop_input(app: web.Application) -> None:
    """First step of shutdown: channels stop taking input, open streams end."""
    hub = app[HUB_KEY]
    for ch in hub.channels.values():
        try:
            await ch.stop()
        except Exception:
            log.exception("event=channel_stop_failed channel=%s", ch.name)
    await hub.dispatcher.stop(grace_s=3.0)


async def _housekeeping(hub: Hub) -> None:
    """Expire stored media and old web messages, hourly."""
    while True:
        try:
            removed = await hub.media.expire()
            await hub.web_events.expire()
            if removed:
                log.info("event=media_expired count=%d", removed)
        except Exception:
            log.exception("event=housekeeping_failed")
        await asyncio.sleep(3600)
