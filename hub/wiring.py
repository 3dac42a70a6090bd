"""The builders `build_app` calls: storage, routing, jobs, skills, access and /admin.

Each constructs one component from settings and the parts built before it; nothing starts here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict

from hub.channels.base import Channel
from hub.delivery import Outbox
from hub.events import Event
from hub.fetch import FetchPolicy
from hub.i18n import N_
from hub.i18n.language import ChatLanguages
from hub.inbound import Dispatcher, tell_unhandled
from hub.jobs.images import ImageJobs
from hub.jobs.results import JobDelivery
from hub.jobs.service import JobService
from hub.metrics import Metrics
from hub.replies import EventReplier, LiveSink
from hub.routing.access import AccessControl
from hub.routing.context import Replier
from hub.routing.people import People
from hub.routing.router import Router
from hub.settings import CHANNEL_NAMES, Settings
from hub.skills.admin.args import AdminArgs
from hub.skills.admin.ops import AdminOps
from hub.skills.admin.repos import AdminRepos
from hub.skills.admin.skill import AdminSkill
from hub.skills.chat import ChatSkill, ModelChoice, NoModelChat, persona_for
from hub.skills.language import LanguageSkill
from hub.skills.media import SECTION_OF, MediaSkills
from hub.skills.persona import ChatCommands
from hub.storage.admin import PairingRepo, QuotaRepo, UsageRepo
from hub.storage.chats import AuditRepo, ChatRepo, ChatSettings, KeyValueRepo, UserRepo
from hub.storage.db import Database
from hub.storage.inbox import InboxRepo
from hub.storage.jobs import JobRepo
from hub.storage.media import MediaStore
from hub.storage.memory import MemoryRepo
from hub.storage.outbox import OutboxRepo
from hub.storage.personas import PersonaRepo
from hub.storage.web_events import WebEventRepo

if TYPE_CHECKING:
    from hub.providers.chat_models import ModelGateway
    from hub.providers.generation import ImageProvider, JobProvider


@dataclass
class Storage:
    """The database and every repository on it, built once (the Hub carries them too)."""

    db: Database
    inbox: InboxRepo
    outbox_repo: OutboxRepo
    chats: ChatRepo
    users: UserRepo
    audit: AuditRepo
    kv: KeyValueRepo
    media: MediaStore
    web_events: WebEventRepo
    memory: MemoryRepo
    personas: PersonaRepo
    pairing: PairingRepo
    quotas: QuotaRepo
    usage: UsageRepo
    job_repo: JobRepo

    def parts(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(Storage)}


class _Ttl(TypedDict, total=False):
    ttl_s: float


def sole_user_ttl(db: Database) -> _Ttl:
    """On SQLite this process is the database's one user (the data_dir lock, which the inbox's
    recovery relies on too): settings it caches change only through it, so none need expire.
    Users are not among them: `hub admin` writes those from another process."""
    return _Ttl(ttl_s=math.inf) if db.is_sqlite else _Ttl()


def build_storage(settings: Settings, holder: str, lease_s: float) -> Storage:
    db = Database(settings.database_url)
    kept = sole_user_ttl(db)
    return Storage(
        db=db,
        inbox=InboxRepo(db, holder, lease_s),
        outbox_repo=OutboxRepo(db, holder, lease_s),
        chats=ChatRepo(db, **kept),
        users=UserRepo(db),
        audit=AuditRepo(db),
        kv=KeyValueRepo(db),
        media=MediaStore(db, settings.media_dir, settings.media_retention_days),
        web_events=WebEventRepo(db),
        memory=MemoryRepo(db, sole_user=db.is_sqlite),
        personas=PersonaRepo(db, **kept),
        pairing=PairingRepo(db),
        quotas=QuotaRepo(db, **kept),
        usage=UsageRepo(db),
        job_repo=JobRepo(db, holder, lease_s),
    )


def build_languages(settings: Settings, store: Storage) -> ChatLanguages:
    """Which language each chat is answered in."""

    async def persona_language(chat: ChatSettings) -> str | None:
        persona = await persona_for(store.personas, chat)
        return persona.language if persona is not None else None

    return ChatLanguages(chats=store.chats.get, persona_language=persona_language, bot=settings.bot.language)


def build_routing(
    settings: Settings,
    store: Storage,
    people: People,
    outbox: Outbox,
    channels: Mapping[str, Channel],
    metrics: Metrics,
    recovery_interval_s: float,
    languages: ChatLanguages,
) -> tuple[Router, Dispatcher]:
    def trust_unsigned(channel: str) -> bool:
        return channel == "wechat" and settings.wechat.allow_admin_in_plain_mode

    async def group_admin(event: Event) -> bool:
        channel = channels.get(event.channel)
        if channel is None:
            return False
        # A body no signature covers could name anyone as its sender: like admin rights,
        # a group's admin rights are not taken from it.
        if event.body_unauthenticated and not trust_unsigned(event.channel):
            return False
        return await channel.is_group_admin(event)

    router = Router(
        aliases=settings.commands.effective_aliases(),
        bot_names=lambda name: channels[name].bot_names if name in channels else (),
        chat_settings=store.chats.get,
        language=languages.of_event,
        group_admin=group_admin,
        group_settings=settings.access.group_settings,
        mark_reachable=store.chats.mark_reachable,
        is_admin=people.is_admin,
        is_banned=people.is_banned,
        trust_unsigned=trust_unsigned,
    )

    def make_replier(event: Event, live: LiveSink | None) -> Replier:
        return EventReplier(event, outbox, channels.get(event.channel), live)

    dispatcher = Dispatcher(
        store.inbox,
        router.handle,
        make_replier,
        metrics,
        recover_all_at_start=store.db.is_sqlite,
        recovery_interval_s=recovery_interval_s,
        tell_unhandled=lambda event: tell_unhandled(outbox, event, languages),
    )
    return router, dispatcher


def build_jobs(
    store: Storage,
    outbox: Outbox,
    metrics: Metrics,
    settings: Settings,
    fetch_policy: FetchPolicy,
    languages: ChatLanguages,
) -> JobService:
    """Long jobs: providers only for the [providers.*] sections that are set."""
    job_providers, image_provider = _generation_providers(settings)
    job_delivery = JobDelivery(store.job_repo, outbox, store.media, fetch_policy=fetch_policy, languages=languages)
    return JobService(
        store.job_repo,
        job_delivery,
        ImageJobs(store.job_repo, job_delivery, store.media, image_provider),
        metrics,
        providers=job_providers,
        release_all_at_start=store.db.is_sqlite,
    )


def build_skills(
    settings: Settings, router: Router, store: Storage, jobs: JobService, languages: ChatLanguages
) -> tuple[ModelGateway | None, ModelChoice | None]:
    router.register("help", router.help_skill, description=N_("list the commands you may use"))
    gateway: ModelGateway | None = None
    model_choice: ModelChoice | None = None
    if settings.models:
        from hub.providers.chat_models import ModelGateway

        gateway = ModelGateway(settings.models)
        model_choice = ModelChoice(gateway, store.kv)
        router.set_fallback(ChatSkill(gateway, model_choice, store.memory, store.personas))
    else:
        router.set_fallback(NoModelChat(), needs="[[models]]")
    no_model = None if settings.models else "[[models]]"
    chat_commands = ChatCommands(store.chats, store.memory, store.personas, model_choice)
    router.register(
        "persona",
        chat_commands.persona,
        description=N_("show or switch this chat's persona"),
        usage=N_("/persona [name]"),
    )
    router.register("reset", chat_commands.reset, description=N_("clear this chat's memory"))
    router.register(
        "model",
        chat_commands.model,
        description=N_("show or switch this chat's model"),
        usage=N_("/model [name]"),
        needs=no_model,
    )
    router.register(
        "lang",
        LanguageSkill(store.chats, languages),
        description=N_("show or switch the language I answer this chat in"),
        usage=N_("/lang [zh|en]"),
    )
    media_skills = MediaSkills(jobs, usable=router.usable)
    for name, description, usage in (
        ("image", N_("make an image"), N_("/image <prompt>")),
        ("video", N_("make a video"), N_("/video <prompt>")),
        ("music", N_("make music"), N_("/music <prompt>")),
    ):
        handler = {"image": media_skills.image, "video": media_skills.video, "music": media_skills.music}[name]
        needs = None if jobs.configured(name) else SECTION_OF[name]
        router.register(name, handler, description=description, usage=usage, skill=name, needs=needs)
    router.register("jobs", media_skills.list_jobs, description=N_("list your recent jobs and their state"))
    router.register(
        "cancel", media_skills.cancel, description=N_("cancel one of your jobs"), usage=N_("/cancel <job id>")
    )
    return gateway, model_choice


def build_access(settings: Settings, router: Router, store: Storage) -> AccessControl:
    """The access policy, rate and quotas, as the router's middlewares."""
    access = AccessControl(
        settings.access,
        settings.quotas,
        users=store.users,
        pairing=store.pairing,
        quota_overrides=store.quotas,
        usage=store.usage,
        audit=store.audit,
    )
    router.use(access.policy)
    router.use(access.rate)
    router.use(access.quota)
    return access


def build_admin(
    settings: Settings,
    router: Router,
    store: Storage,
    people: People,
    access: AccessControl,
    outbox: Outbox,
    jobs: JobService,
    channels: Mapping[str, Channel],
    model_choice: ModelChoice | None,
    languages: ChatLanguages,
) -> AdminSkill:
    repos = AdminRepos(
        users=store.users,
        chats=store.chats,
        audit=store.audit,
        kv=store.kv,
        quotas=store.quotas,
        pairing=store.pairing,
        personas=store.personas,
        usage=store.usage,
        inbox=store.inbox,
        outbox=store.outbox_repo,
    )
    args = AdminArgs(set(CHANNEL_NAMES) | set(channels))
    ops = AdminOps(
        args=args,
        repos=repos,
        channel_status=partial(channel_status, channels),
        outbox=outbox,
        jobs=jobs,
        people=people,
        access=access,
        languages=languages,
    )
    admin = AdminSkill(
        repos=repos,
        people=people,
        access=access,
        outbox=outbox,
        ops=ops,
        args=args,
        languages=languages,
        model_names=[m.name for m in settings.models],
        model_changed=model_choice.forget if model_choice is not None else None,
    )
    router.register("admin", admin, description=N_("run the bot (admins)"), usage=N_("/admin help"), admin_only=True)
    router.on_refusal(admin.on_refusal)
    return admin


def channel_status(channels: Mapping[str, Channel]) -> dict[str, str]:
    """Each channel's name and one word for its state, for `/admin status` and /healthz."""
    return {name: ch.status() for name, ch in channels.items()}


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
