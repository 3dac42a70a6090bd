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
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from hub.api import DeliveryApi
from hub.channels.base import Channel
from hub.channels.web import WebChannel
from hub.delivery import Outbox
from hub.events import Event
from hub.fetch import Fetcher, policy_from_settings
from hub.http import ServerRoutes, error_middleware
from hub.inbound import Dispatcher, EventReplier, LiveSink, tell_unhandled
from hub.jobs.images import ImageJobs
from hub.jobs.results import JobDelivery
from hub.jobs.service import JobService
from hub.metrics import Metrics
from hub.providers.generation import ImageProvider, JobProvider
from hub.routing.access import AccessControl
from hub.routing.context import Replier
from hub.routing.people import People
from hub.routing.router import Router
from hub.settings import CHANNEL_NAMES, Settings
from hub.skills.admin.args import AdminArgs
from hub.skills.admin.ops import AdminOps
from hub.skills.admin.skill import AdminSkill
from hub.skills.chat import ChatSkill, ModelChoice, NoModelChat
from hub.skills.media import MediaSkills
from hub.skills.persona import ChatCommands
from hub.storage.admin import PairingRepo, QuotaRepo, UsageRepo
from hub.storage.chats import AuditRepo, ChatRepo, KeyValueRepo, UserRepo
from hub.storage.db import Database
from hub.storage.deliveries import DeliveryRepo
from hub.storage.inbox import InboxRepo
from hub.storage.jobs import JobRepo
from hub.storage.media import MediaStore
from hub.storage.memory import MemoryRepo
from hub.storage.migrate import migrate
from hub.storage.outbox import OutboxRepo
from hub.storage.personas import PersonaRepo
from hub.storage.retention import prune
from hub.storage.web_events import WebEventRepo

if TYPE_CHECKING:
    from hub.providers.chat_models import ModelGateway

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
    jobs: JobService
    access: AccessControl
    admin: AdminSkill
    memory: MemoryRepo
    personas: PersonaRepo
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
    # Media URLs the channels download (delivery-API media); providers' results have their own.
    fetch_policy = policy_from_settings(settings)
    fetcher = Fetcher(fetch_policy)
    outbox = Outbox(outbox_repo, media, channels, chats, metrics)

    router = Router(
        aliases=settings.commands.aliases,
        bot_names=lambda name: channels[name].bot_names if name in channels else (),
        chat_settings=chats.get,
        mark_reachable=chats.mark_reachable,
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
        tell_unhandled=lambda event: tell_unhandled(outbox, event),
    )

    # --- channels: each platform module is imported only when enabled ---------------------
    if settings.web.enabled:
        channels["web"] = WebChannel(
            settings.web,
            events=web_events,
            media=media,
            submit_and_wait=dispatcher.submit_and_wait,
            http=settings.http,
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
        )
    if settings.wechat.enabled or settings.wecom.enabled:
        from hub.channels.wechat import PersonaGreeting

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
            )
        if settings.wecom.enabled:
            from hub.channels.wecom import WecomChannel

            channels["wecom"] = WecomChannel(
                settings.wecom,
                ingress=dispatcher,
                media=media,
                public_url=settings.http.public_url,
                greeting=greeting,
                fetcher=fetcher,
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
        )
    for ch in extra_channels:
        channels[ch.name] = ch

    # --- long jobs: providers only for the [providers.*] sections that are set ---------------
    job_providers, image_provider = _generation_providers(settings)
    job_repo = JobRepo(db, holder, lease_s)
    job_delivery = JobDelivery(job_repo, outbox, media, fetch_policy=fetch_policy)
    jobs = JobService(
        job_repo,
        job_delivery,
        ImageJobs(job_repo, job_delivery, media, image_provider),
        metrics,
        providers=job_providers,
        release_all_at_start=db.is_sqlite,
    )

    # --- skills ----------------------------------------------------------------------------
    router.register("help", router.help_skill, description="list the commands you may use")
    memory = MemoryRepo(db)
    personas = PersonaRepo(db)
    gateway: ModelGateway | None = None
    model_choice: ModelChoice | None = None
    if settings.models:
        from hub.providers.chat_models import ModelGateway

        gateway = ModelGateway(settings.models)
        model_choice = ModelChoice(gateway, kv)
        router.set_fallback(ChatSkill(gateway, model_choice, memory, personas))
    else:
        router.set_fallback(NoModelChat())
    chat_commands = ChatCommands(chats, memory, personas, model_choice)
    router.register(
        "persona", chat_commands.persona, description="show or switch this chat's persona", usage="/persona [name]"
    )
    router.register("reset", chat_commands.reset, description="clear this chat's memory")
    router.register("model", chat_commands.model, description="show or switch this chat's model", usage="/model [name]")
    media_skills = MediaSkills(jobs)
    router.register("image", media_skills.image, description="make an image", usage="/image <prompt>", skill="image")
    router.register("video", media_skills.video, description="make a video", usage="/video <prompt>", skill="video")
    router.register("music", media_skills.music, description="make music", usage="/music <prompt>", skill="music")
    router.register("jobs", media_skills.list_jobs, description="list your recent jobs and their state")
    router.register("cancel", media_skills.cancel, description="cancel one of your jobs", usage="/cancel <job id>")

    # --- access policy, rate, quotas; /admin -------------------------------------------------
    pairing, quotas, usage = PairingRepo(db), QuotaRepo(db), UsageRepo(db)
    access = AccessControl(
        settings.access,
        settings.quotas,
        users=users,
        pairing=pairing,
        quota_overrides=quotas,
        usage=usage,
        audit=audit,
    )
    router.use(access.policy)
    router.use(access.rate)
    router.use(access.quota)
    admin_args = AdminArgs(set(CHANNEL_NAMES) | set(channels))
    admin_skill = AdminSkill(
        people=people,
        users=users,
        chats=chats,
        audit=audit,
        kv=kv,
        quotas=quotas,
        pairing=pairing,
        personas=personas,
        access=access,
        outbox=outbox,
        args=admin_args,
        model_names=[m.name for m in settings.models],
        allow_unauthenticated=settings.wechat.allow_admin_in_plain_mode,
        model_changed=model_choice.forget if model_choice is not None else None,
        ops=AdminOps(
            args=admin_args,
            db=db,
            channels=channels,
            inbox=inbox,
            outbox_repo=outbox_repo,
            outbox=outbox,
            jobs=jobs,
            users=users,
            people=people,
            access=access,
            usage=usage,
        ),
    )
    router.register("admin", admin_skill, description="run the bot (admins)", usage="/admin help", admin_only=True)
    router.on_refusal(admin_skill.on_refusal)

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
        jobs=jobs,
        access=access,
        admin=admin_skill,
        memory=memory,
        personas=personas,
        channels=channels,
        models=gateway,
    )

    app = web.Application(client_max_size=settings.http.max_body_bytes, middlewares=[error_middleware])
    app[HUB_KEY] = hub
    server = ServerRoutes(
        db=db,
        metrics=metrics,
        media=media,
        inbox=inbox,
        outbox=outbox_repo,
        channels=channels,
        metrics_token=settings.http.metrics_token or (settings.web.token if _web_token_required(settings) else None),
    )
    app.add_routes(server.routes())
    api = DeliveryApi(
        settings.api,
        outbox=outbox,
        deliveries=DeliveryRepo(db),
        media=media,
        channels=channels,
        metrics=metrics,
        public_url=settings.http.public_url,
    )
    app.add_routes(api.routes())
    for ch in channels.values():
        app.add_routes(ch.routes())
    app.cleanup_ctx.append(_lifecycle)

    async def close_fetcher(_: web.Application) -> None:
        await fetcher.close()  # after the lifecycle's end: the channels have stopped sending

    app.on_cleanup.append(close_fetcher)
    app.on_shutdown.append(_stop_input)
    return app


def _web_token_required(settings: Settings) -> bool:
    return settings.web.enabled and settings.http.is_public


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    hub = app[HUB_KEY]
    await migrate(hub.db)
    await hub.db.start()
    await hub.personas.sync(hub.settings.personas)
    if hub.models is not None:
        await hub.models.start()
    await hub.web_events.start()
    for ch in hub.channels.values():
        await ch.start()
    # On SQLite this process is the database's only user: leases left by a killed run are its own.
    await hub.outbox.start(release_all=hub.db.is_sqlite)
    await hub.jobs.start()
    await hub.dispatcher.start()
    hub.background.append(asyncio.create_task(_housekeeping(hub), name="housekeeping"))
    log.info("event=started holder=%s channels=%s", hub.holder, ",".join(hub.channels))
    yield
    for t in hub.background:
        t.cancel()
    await asyncio.gather(*hub.background, return_exceptions=True)
    await hub.dispatcher.stop(grace_s=3.0)
    if hub.models is not None:
        await hub.models.stop()
    # Sends under way get a short grace; what does not finish resumes after restart.
    await asyncio.gather(hub.jobs.stop(grace_s=2.0), hub.outbox.stop(grace_s=2.0))
    for ch in hub.channels.values():
        try:
            await ch.close()
        except Exception:
            log.exception("event=channel_close_failed channel=%s", ch.name)
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
    """Expire stored media, old web messages and handled rows, hourly."""
    while True:
        try:
            removed = await hub.media.expire()
            await hub.web_events.expire()
            await hub.access.housekeeping()
            await prune(hub.db, hub.settings.database.retention_days)
            if removed:
                log.info("event=media_expired count=%d", removed)
        except Exception:
            log.exception("event=housekeeping_failed")
        await asyncio.sleep(3600)


def _generation_providers(settings: Settings) -> tuple[dict[str, JobProvider], ImageProvider | None]:
    """Video, music and image backends, by skill, for the sections that are configured."""
    found: dict[str, JobProvider] = {}
    conf = settings.providers
    if conf.hunyuan is not None:
        from hub.providers.hunyuan import HunyuanVideo

        found["video"] = HunyuanVideo(conf.hunyuan)
    if conf.music is not None:
        from hub.providers.music import SunoMusic

        found["music"] = SunoMusic(conf.music)
    image: ImageProvider | None = None
    if conf.image is not None:
        from hub.providers.images import build_image_provider

        image = build_image_provider(conf.image)
    return found, image
