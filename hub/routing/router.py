"""The router: who may talk, the group mention rule, command parsing, dispatch to skills."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from hub.events import Event
from hub.i18n import N_, Lang, Texts
from hub.routing.commands import CommandObject, parse_command
from hub.routing.context import Context, Handler, Middleware, Replier, Skill
from hub.skills.base import SkillInfo
from hub.storage.chats import ChatSettings
from hub.storage.db import is_transient

# A body no signature covers, by channel: why /admin is refused, and what the operator can do.
UNSIGNED_ADMIN = {
    "wechat": N_(
        "Sorry, admin commands are refused here: this WeChat connection's signature does not cover the "
        "message, so anyone who saw one callback could send this as you. Set [wechat] encoding_aes_key "
        "(safe mode) to use /admin over WeChat, or allow_admin_in_plain_mode = true to accept the risk."
    ),
    "feishu": N_(
        "Sorry, admin commands are refused here: this Feishu connection's signature does not cover the "
        "message, so anyone who saw one callback could send this as you. Set [feishu] encrypt_key to use "
        "/admin over Feishu."
    ),
}
UNSIGNED_OTHER = N_(
    "Sorry, admin commands are refused here: this %(channel)s connection's signature does not cover the "
    "message, so anyone who saw one callback could send this as you."
)
log = logging.getLogger("hub.router")

APOLOGY = N_("Sorry, something went wrong while handling that. Please try again in a moment.")
# Commands that change a whole group (its persona, model, memory, language).
GROUP_SETTINGS = frozenset({"persona", "model", "reset", "lang"})


class Router:
    def __init__(
        self,
        *,
        aliases: Mapping[str, str],
        bot_names: Callable[[str], Sequence[str]],
        chat_settings: Callable[[str], Awaitable[ChatSettings]],
        is_admin: Callable[[str], Awaitable[bool]],
        is_banned: Callable[[str], Awaitable[bool]],
        language: Callable[[Event, ChatSettings], Awaitable[Lang]] | None = None,
        group_admin: Callable[[Event], Awaitable[bool]] | None = None,
        group_settings: str = "admins",
        mark_reachable: Callable[[str], Awaitable[None]] | None = None,
        trust_unsigned: Callable[[str], bool] = lambda channel: False,
    ) -> None:
        self._aliases = dict(aliases)
        self._mark_reachable = mark_reachable
        self._trust_unsigned = trust_unsigned
        self._bot_names = bot_names
        self._chat_settings = chat_settings
        self._is_admin = is_admin
        self._is_banned = is_banned
        self._language = language
        self._group_admin = group_admin
        self._group_settings_open = group_settings == "anyone"
        self._skills: dict[str, SkillInfo] = {}
        self._fallback: SkillInfo | None = None
        self._middlewares: list[Middleware] = []
        self._refusal_hooks: list[Callable[[Context, str], Awaitable[None]]] = []
        # /help's text by everything it depends on: built from a few dozen translations, the
        # same for every chat alike (a popular command when a bot joins a busy group).
        self._help: dict[tuple[object, ...], str] = {}

    # --- registration -------------------------------------------------------------------

    def register(
        self,
        name: str,
        handler: Skill,
        *,
        description: str,
        usage: str = "",
        aliases: Sequence[str] = (),
        admin_only: bool = False,
        skill: str | None = None,
        needs: str | None = None,
    ) -> None:
        """`description` and `usage` are msgids (marked with N_); `needs` names the config
        section the command waits for when it is not set up on this hub."""
        info = SkillInfo(name, handler, description, usage or f"/{name}", admin_only, skill, tuple(aliases), needs)
        self._skills[name] = info
        for alias in aliases:
            self._aliases[alias.lstrip("/")] = name
        self._help.clear()

    def set_fallback(self, handler: Skill, *, skill: str = "chat", needs: str | None = None) -> None:
        """What handles plain text (the chat skill)."""
        self._fallback = SkillInfo(skill, handler, N_("chat with the model"), "", False, skill, needs=needs)
        self._help.clear()

    def use(self, middleware: Middleware) -> None:
        """Add a middleware around every skill call; the first added runs outermost."""
        self._middlewares.append(middleware)

    def on_refusal(self, hook: Callable[[Context, str], Awaitable[None]]) -> None:
        """Called with the context and a reason whenever the router refuses a command (audit)."""
        self._refusal_hooks.append(hook)

    @property
    def skills(self) -> Mapping[str, SkillInfo]:
        return self._skills

    def aliases_of(self, name: str) -> list[str]:
        return sorted(alias for alias, target in self._aliases.items() if target.lstrip("/").lower() == name)

    def available(self, ctx: Context) -> list[SkillInfo]:
        """The commands this person may use in this chat, for /help."""
        out = []
        for info in self._skills.values():
            if info.admin_only and not ctx.is_admin:
                continue
            if info.skill and info.skill in ctx.chat.skills_off:
                continue
            out.append(info)
        return out

    def usable(self, ctx: Context, name: str) -> bool:
        """Whether `name` is a command this person could run here, set up on this hub."""
        info = self._skills.get(name)
        return info is not None and info.needs is None and info in self.available(ctx)

    async def _may_change_group(self, ctx: Context) -> bool:
        """Whether this person may change this chat's settings (always, outside a group)."""
        if ctx.event.chat.kind != "group" or self._group_settings_open or ctx.is_admin:
            return True
        return self._group_admin is not None and await self._group_admin(ctx.event)

    async def help_skill(self, ctx: Context) -> None:
        may_change = await self._may_change_group(ctx)
        group = ctx.event.chat.kind == "group"
        key = (ctx.lang, ctx.is_admin, ctx.chat.skills_off, may_change, group)
        text = self._help.get(key)
        if text is None:
            if len(self._help) >= 1000:  # skills_off sets are few; this bounds the odd case
                self._help.clear()
            text = self._help[key] = self._help_text(ctx, may_change, group)
        await ctx.reply(text)

    def _help_text(self, ctx: Context, may_change: bool, group: bool) -> str:
        t = ctx.t
        lines = [t("Commands:")]
        shown = self.available(ctx)
        if not may_change:
            shown = [info for info in shown if info.name not in GROUP_SETTINGS]
        for info in shown:
            # A bare `/name` is not a text to translate; a usage with arguments is (`/video <描述>`).
            usage = info.usage if info.usage == f"/{info.name}" else t(info.usage)
            if t.lang == "zh" and (aliases := self.aliases_of(info.name)):
                usage = t("%(usage)s (also %(aliases)s)", usage=usage, aliases=", ".join(f"/{a}" for a in aliases))
            if info.needs is not None:
                lines.append(
                    t(
                        "%(usage)s — %(what)s (not set up on this hub: add %(section)s)",
                        usage=usage,
                        what=t(info.description),
                        section=info.needs,
                    )
                )
            else:
                lines.append(t("%(usage)s — %(what)s", usage=usage, what=t(info.description)))
        fallback = self._fallback
        if fallback and "chat" not in ctx.chat.skills_off:
            if fallback.needs is not None and group:
                lines.append(
                    t(
                        "Mention me or reply to me to chat (not set up on this hub: add %(section)s).",
                        section=fallback.needs,
                    )
                )
            elif fallback.needs is not None:
                lines.append(
                    t("Any other text: chat with me (not set up on this hub: add %(section)s).", section=fallback.needs)
                )
            elif group:
                lines.append(t("Mention me or reply to me to chat."))
            else:
                lines.append(t("Any other text: chat with me."))
        return "\n".join(lines)

    # --- dispatch -----------------------------------------------------------------------

    async def _admin_rights(self, event: Event) -> tuple[bool, bool]:
        """(whether the sender acts as an admin, whether they would but for an unsigned body)."""
        # The web channel marks a request that carried the web token under `token_is_admin`.
        web_admin = event.channel == "web" and event.context.get("web_admin") is True
        is_admin = web_admin or await self._is_admin(event.sender.key)
        # A body no signature covers (WeChat plain mode) could come from anyone who saw one
        # callback URL: it carries no admin rights (not /admin, nor quotas, allowlists, /cancel).
        if is_admin and event.body_unauthenticated and not self._trust_unsigned(event.channel):
            return False, True
        return is_admin, False

    async def handle(self, event: Event, replier: Replier) -> None:
        """Route one event to its skill. Never raises: a failing skill gets an apology."""
        started = time.perf_counter()
        chat = await self._reachable_chat(str(event.chat))
        if await self._is_banned(event.sender.key):
            log.info("event=ignored reason=banned id=%s chat=%s", event.id, event.chat)
            return
        command = parse_command(event.message.text, self._bot_names(event.channel), self._aliases)
        if command is not None and command.foreign:
            return
        info: SkillInfo | None
        if command is None:
            if not event.addressed or not event.message:
                return
            info = self._fallback
            if info is None or (not event.message.text and not event.message.media):
                return
        else:
            info = self._skills.get(command.name)
        is_admin, unsigned_admin = await self._admin_rights(event)
        lang: Lang = await self._language(event, chat) if self._language is not None else "en"
        ctx = Context(event=event, command=command, chat=chat, is_admin=is_admin, replier=replier, lang=lang)
        refusal, reason = await self._refusal(ctx, command, info)
        if unsigned_admin and info is not None and info.admin_only:
            text = UNSIGNED_ADMIN.get(event.channel)
            refusal = ctx.t(text) if text else ctx.t(UNSIGNED_OTHER, channel=event.channel)
            reason = "body not covered by a signature"
        if refusal is None and info is not None:
            ctx.skill = info.skill or info.name

        async def innermost(_event: Event, c: Context) -> None:
            if refusal is not None:
                # The audit first, then the answer: whoever reads the refusal finds it recorded.
                if reason is not None:
                    for hook in self._refusal_hooks:
                        await hook(c, reason)
                await c.reply(refusal)
                return
            assert info is not None
            await info.handler(c)

        try:
            await self._run(innermost, event, ctx)
        finally:
            log.info(
                "event=handled id=%s channel=%s chat=%s skill=%s ms=%.1f",
                event.id,
                event.channel,
                event.chat,
                ctx.skill or "-",
                (time.perf_counter() - started) * 1000,
            )

    async def _refusal(
        self, ctx: Context, command: CommandObject | None, info: SkillInfo | None
    ) -> tuple[str | None, str | None]:
        """Why the matched command may not run here, if it may not: (the reply, the reason to audit).

        Refusals (unknown command, not an admin, switched off) run inside the middlewares too, so
        the access policy speaks first to someone it keeps out; they carry no skill name, so
        nothing counts them as a use. Each says what to do next.
        """
        t = ctx.t
        if info is None:
            assert command is not None
            return t("Unknown command /%(command)s. Send /help to see what I can do.", command=command.raw_name), None
        if info.admin_only and not ctx.is_admin:
            return _admins_only(ctx.t, ctx.event), "not an admin"
        if info.skill and info.skill in ctx.chat.skills_off:
            return t(
                "/%(command)s is switched off in this chat. An admin can turn it back on.", command=info.name
            ), None
        if command is not None and info.name in GROUP_SETTINGS and not await self._may_change_group(ctx):
            return (
                t(
                    "In a group, /%(command)s changes the whole group: only the group's admins and the bot's "
                    "admins may use it here. Ask one of them, or use it in a private chat with me.",
                    command=info.name,
                ),
                None,
            )
        return None, None

    async def _reachable_chat(self, ref: str) -> ChatSettings:
        """The chat's settings; a chat marked unreachable that writes again is reachable again
        (so `/admin broadcast all` includes it once more)."""
        chat = await self._chat_settings(ref)
        if chat.unreachable and self._mark_reachable is not None:
            await self._mark_reachable(ref)
            chat = dataclasses.replace(chat, unreachable=False)
            log.info("event=chat_reachable chat=%s", ref)
        return chat

    async def _run(self, innermost: Handler, event: Event, ctx: Context) -> None:
        """Through the middlewares to the skill; a skill's failure becomes an apology."""
        handler = innermost
        for mw in reversed(self._middlewares):
            handler = _bind(mw, handler)
        try:
            await handler(event, ctx)
        except Exception as exc:
            if is_transient(exc):
                raise  # the database refused: the event is handled again, no apology
            log.exception(
                "event=skill_failed id=%s channel=%s chat=%s skill=%s", event.id, event.channel, event.chat, ctx.skill
            )
            try:
                await ctx.reply(ctx.t(APOLOGY))
            except Exception:
                log.exception("event=apology_failed id=%s", event.id)


def _admins_only(t: Texts, event: Event) -> str:
    """The admins-only refusal, with how this person would become one on this platform."""
    if event.channel == "web":
        return t(
            "Sorry, that command is for the bot's admins only. On the web chat, an admin is whoever "
            "sends the web token: set [web] token and token_is_admin = true, then open the page with it."
        )
    return t(
        "Sorry, that command is for the bot's admins only. To make you one, whoever runs this hub "
        "can run: hub admin add %(user)s",
        user=event.sender.key,
    )


def _bind(mw: Middleware, nxt: Handler) -> Handler:
    async def call(event: Event, ctx: Context) -> None:
        await mw(nxt, event, ctx)

    return call
