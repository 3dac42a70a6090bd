"""Wiring: settings → storage → routing → channels → jobs → skills → aiohttp app.

This module and hub/wiring.py construct the hub's objects; everything else receives its
collaborators in `__init__`. A platform module (and its SDK) is imported only when its
channel is enabled. Each component's start and stop is one `cleanup_ctx` generator, in order:
storage, channels, outbox and jobs, models, dispatcher, housekeeping; shutdown runs them
backwards, after the channels' `stop()` has ended their input.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from hub.channels.base import Channel
from hub.channels.web import WebChannel
from hub.delivery import Outbox
from hub.fetch import Fetcher, policy_from_settings
from hub.http import ServerRoutes, error_middleware
from hub.i18n.language import ChatLanguages
from hub.inbound import Dispatcher
from hub.jobs.service import JobService
from hub.lifecycle import lifecycle, stop_input
from hub.metrics import Metrics
from hub.routing.access import AccessControl
from hub.routing.people import People
from hub.routing.router import Router
from hub.settings import Settings
from hub.skills.admin.skill import AdminSkill
from hub.storage.chats import ChatRepo
from hub.storage.db import Database
from hub.storage.media import MediaStore
from hub.storage.personas import PersonaRepo
from hub.wiring import (
    Storage,
    build_access,
    build_admin,
    build_jobs,
    build_languages,
    build_routing,
    build_skills,
    build_storage,
    channel_status,
)

if TYPE_CHECKING:
    from hub.providers.chat_models import ModelGateway

log = logging.getLogger("hub.app")


@dataclass
class Hub(Storage):
    """The constructed parts, kept on the app under HUB_KEY for the lifecycle and for tests."""

    settings: Settings
    holder: str
    metrics: Metrics
    people: People
    outbox: Outbox
    router: Router
    dispatcher: Dispatcher
    jobs: JobService
    access: AccessControl
    admin: AdminSkill
    channels: dict[str, Channel] = field(default_factory=dict)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    # The chat model gateway; None while no [[models]] are configured.
    models: ModelGateway | None = None


HUB_KEY = web.AppKey("hub", Hub)


def instance_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(3)}"


def build_app(
    settings: Settings,
    *,
    extra_channels: Sequence[Channel] = (),
    lease_s: float = 30.0,
    recovery_interval_s: float = 10.0,
    qq_windows: Mapping[str, float] | None = None,
) -> web.Application:
    """Build the whole hub as an aiohttp application; nothing runs until it is started.

    `extra_channels` lets a test (or an embedding program) add channels of its own;
    `qq_windows` shortens QQ's reply windows (seconds by chat kind) for tests.
    """
    holder = instance_id()
    metrics = Metrics()
    store = build_storage(settings, holder, lease_s)
    people = People(store.users, settings.admins)
    channels: dict[str, Channel] = {}
    # Media URLs the channels download (delivery-API media); providers' results have their own.
    fetch_policy = policy_from_settings(settings)
    fetcher = Fetcher(fetch_policy)
    outbox = Outbox(store.outbox_repo, store.media, channels, store.chats, metrics)
    languages = build_languages(settings, store)
    router, dispatcher = build_routing(
        settings, store, people, outbox, channels, metrics, recovery_interval_s, languages
    )
    outbox.give_way = dispatcher.give_way  # sends too yield to the acks while the loop is behind
    _build_channels(
        settings,
        channels,
        store,
        dispatcher=dispatcher,
        fetcher=fetcher,
        outbox=outbox,
        qq_windows=qq_windows,
        languages=languages,
    )
    for ch in extra_channels:
        channels[ch.name] = ch
    jobs = build_jobs(store, outbox, metrics, settings, fetch_policy, languages)
    gateway, model_choice = build_skills(settings, router, store, jobs, languages)
    access = build_access(settings, router, store)
    admin = build_admin(settings, router, store, people, access, outbox, jobs, channels, model_choice, languages)
    hub = Hub(
        **store.parts(),
        settings=settings,
        holder=holder,
        metrics=metrics,
        people=people,
        outbox=outbox,
        router=router,
        dispatcher=dispatcher,
        jobs=jobs,
        access=access,
        admin=admin,
        channels=channels,
        models=gateway,
    )
    return _build_http(hub, fetcher)


def _build_channels(
    settings: Settings,
    channels: dict[str, Channel],
    store: Storage,
    *,
    dispatcher: Dispatcher,
    fetcher: Fetcher,
    outbox: Outbox,
    qq_windows: Mapping[str, float] | None,
    languages: ChatLanguages,
) -> None:
    web_events, media, chats, db = store.web_events, store.media, store.chats, store.db
    # --- channels: each platform module is imported only when enabled ---------------------
    if settings.web.enabled:
        channels["web"] = WebChannel(
            settings.web,
            events=web_events,
            media=media,
            submit_and_wait=dispatcher.submit_and_wait,
            http=settings.http,
            languages=languages,
        )
    if settings.telegram.enabled:
        from hub.channels.telegram import TelegramChannel

        channels["telegram"] = TelegramChannel(
            settings.telegram,
            ingress=dispatcher,
            media=media,
            chats=chats,
            db=db,
            public_url=settings.http.public_url,
            fetcher=fetcher,
            languages=languages,
        )
    _build_wechat_channels(
        settings, channels, media=media, dispatcher=dispatcher, chats=chats, db=db, fetcher=fetcher, languages=languages
    )
    if settings.qq.enabled:
        from hub.channels.qq.channel import QQChannel
        from hub.storage.reply_slots import ReplySlotRepo

        channels["qq"] = QQChannel(
            settings.qq,
            ingress=dispatcher,
            media=media,
            public_url=settings.http.public_url,
            slots=ReplySlotRepo(db),
            release_waiting=outbox.release_waiting,
            windows=qq_windows,
            languages=languages,
        )
    if settings.feishu.enabled:
        from hub.channels.feishu import FeishuChannel

        channels["feishu"] = FeishuChannel(
            settings.feishu,
            ingress=dispatcher,
            media=media,
            db=db,
            public_url=settings.http.public_url,
            fetcher=fetcher,
            languages=languages,
        )
    if settings.onebot.enabled:
        _build_onebot(settings, channels, store, dispatcher=dispatcher, outbox=outbox, languages=languages)


def _build_onebot(
    settings: Settings,
    channels: dict[str, Channel],
    store: Storage,
    *,
    dispatcher: Dispatcher,
    outbox: Outbox,
    languages: ChatLanguages,
) -> None:
    from hub.channels.onebot import OneBotChannel

    async def onebot_back(self_id: str) -> None:
        # What waited for this account's socket goes now, not at its next backoff.
        await outbox.retry_now([f"onebot:private:{self_id}/", f"onebot:group:{self_id}/"])

    channels["onebot"] = OneBotChannel(
        settings.onebot,
        ingress=dispatcher,
        media=store.media,
        public_url=settings.http.public_url,
        max_frame_bytes=settings.http.max_body_bytes,
        on_connect=onebot_back,
        recent_sent=lambda: store.outbox_repo.recent_sent_ids("onebot:", 20000),
        languages=languages,
    )


def _build_wechat_channels(
    settings: Settings,
    channels: dict[str, Channel],
    *,
    media: MediaStore,
    dispatcher: Dispatcher,
    chats: ChatRepo,
    db: Database,
    fetcher: Fetcher,
    languages: ChatLanguages,
) -> None:
    if settings.wechat.enabled or settings.wecom.enabled:
        from hub.skills.chat import PersonaGreeting

        greeting = PersonaGreeting(chats, PersonaRepo(db))
        if settings.wechat.enabled:
            from hub.channels.replay import WINDOW_S
            from hub.channels.wechat import WechatChannel
            from hub.storage.held import HeldReplyRepo
            from hub.storage.nonces import NonceRepo

            channels["wechat"] = WechatChannel(
                settings.wechat,
                ingress=dispatcher,
                media=media,
                public_url=settings.http.public_url,
                held=HeldReplyRepo(db),
                nonces=NonceRepo(db, keep_s=2 * WINDOW_S),
                greeting=greeting,
                fetcher=fetcher,
                languages=languages,
            )
        if settings.wecom.enabled:
            from hub.channels.wechat import WecomChannel

            channels["wecom"] = WecomChannel(
                settings.wecom,
                ingress=dispatcher,
                media=media,
                public_url=settings.http.public_url,
                greeting=greeting,
                fetcher=fetcher,
                languages=languages,
            )


def _build_http(hub: Hub, fetcher: Fetcher) -> web.Application:
    settings = hub.settings
    app = web.Application(client_max_size=settings.http.max_body_bytes, middlewares=[error_middleware])
    app[HUB_KEY] = hub
    server = ServerRoutes(
        db=hub.db,
        metrics=hub.metrics,
        media=hub.media,
        inbox=hub.inbox,
        outbox=hub.outbox_repo,
        channel_status=partial(channel_status, hub.channels),
        metrics_token=settings.http.metrics_token or (settings.web.token if _web_token_required(settings) else None),
    )
    app.add_routes(server.routes())
    if settings.api.token:  # no token, no API (its paths answer 404): nothing to import
        from hub.api import DeliveryApi
        from hub.storage.deliveries import DeliveryRepo

        api = DeliveryApi(
            settings.api,
            outbox=hub.outbox,
            deliveries=DeliveryRepo(hub.db),
            media=hub.media,
            channels=hub.channels,
            metrics=hub.metrics,
            public_url=settings.http.public_url,
        )
        app.add_routes(api.routes())
    for ch in hub.channels.values():
        app.add_routes(ch.routes())
    app.cleanup_ctx.extend(lifecycle(hub))

    async def close_fetcher(_: web.Application) -> None:
        await fetcher.close()  # after the lifecycle's end: the channels have stopped sending

    app.on_cleanup.append(close_fetcher)
    app.on_shutdown.append(partial(stop_input, hub))
    return app


def _web_token_required(settings: Settings) -> bool:
    return settings.web.enabled and settings.http.is_public
