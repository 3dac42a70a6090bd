"""`/admin`: run the hub from the chat app. Admins only; every action and refusal is audited.

This module holds the command's dispatch and the subcommands that change who may do what
(ban, quota, skill, persona, model, approve) or read the audit log; `ops.py` holds the
ones that look at and steer the running hub (status, jobs, job, who, broadcast).

The admin reads every answer in the chat's language; what they type (subcommands, skill
names, users, chats, config keys) stays as it is, and the audit log stays in English.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping

from hub.delivery import Outbox
from hub.events import ChatRef, Message
from hub.i18n import N_, Lang, texts
from hub.i18n.language import HINT_KEY, ChatLanguages
from hub.routing.access import SKILLS, AccessControl
from hub.routing.context import Context
from hub.routing.people import People
from hub.skills.admin.args import AdminArgs, Invalid, Subcommand, listing
from hub.skills.admin.ops import AdminOps
from hub.skills.admin.repos import AdminRepos
from hub.storage.admin import DEFAULT_SUBJECT
from hub.storage.outbox import NewMessage
from hub.storage.personas import FIELDS

log = logging.getLogger("hub.admin")
# Answers that name people and what they did: never into a group where every member reads them.
PRIVATE_ANSWERS = frozenset({"who", "audit"})
# Platforms where a user's private chat with the bot has the user's own id (Telegram).
PRIVATE_BY_USER_ID = frozenset({"telegram"})
# Telegram delivers only to someone who has started a chat with the bot: say so.
PRIVATE_NOTE = N_("I sent you the answer in a private chat (if it does not arrive, start a chat with me first).")
APPROVED_NOTICE = N_("An admin approved you: you can talk to me now. Send /help to see what I can do.")
# The same line as each command of /help.
HELP_LINE = N_("%(usage)s — %(what)s")
NO_SKILL = N_("No skill '%(skill)s': choose one of %(skills)s.")
NAME_ONE_USER = N_("Name one user.")


class AdminSkill:
    """The `/admin` command. `ops.py` does the read-mostly half (status, jobs, broadcast).

    Only the router calls it, for admins alone (registered `admin_only`): the router's
    refusal, with how to become an admin, is the one a non-admin reads.
    """

    def __init__(
        self,
        *,
        repos: AdminRepos,
        people: People,
        access: AccessControl,
        outbox: Outbox,
        ops: AdminOps,
        args: AdminArgs,
        languages: ChatLanguages,
        model_names: Collection[str],
        model_changed: Callable[[], None] | None = None,
    ) -> None:
        self._people = people
        self._users = repos.users
        self._chats = repos.chats
        self._audit = repos.audit
        self._kv = repos.kv
        self._quotas = repos.quotas
        self._pairing = repos.pairing
        self._personas = repos.personas
        self._access = access
        self._outbox = outbox
        self._args = args
        self._languages = languages
        self._models = tuple(model_names)
        # Lets the chat skill drop its cached default at once, in this process.
        self._model_changed = model_changed
        self.subcommands: Mapping[str, Subcommand] = {s.name: s for s in self._table(ops)}

    def _table(self, ops: AdminOps) -> list[Subcommand]:
        """The subcommands, in the order `/admin help` lists them."""
        return [
            Subcommand("help", N_("/admin help"), N_("this list"), self._help),
            Subcommand(
                "status",
                N_("/admin status"),
                N_("uptime, channels, backlogs, jobs, failures in the last hour"),
                ops.status,
            ),
            Subcommand("jobs", N_("/admin jobs [state]"), N_("recent jobs, optionally in one state"), ops.jobs),
            Subcommand(
                "job",
                N_("/admin job <id> retry|cancel"),
                N_("retry a failed job or cancel a running one"),
                ops.job,
            ),
            Subcommand(
                "ban",
                N_("/admin ban <user>"),
                N_("ignore everything from a user (e.g. telegram:123)"),
                self._ban,
            ),
            Subcommand("unban", N_("/admin unban <user>"), N_("listen to a banned user again"), self._unban),
            Subcommand(
                "quota",
                N_("/admin quota <user|default> <skill> <per day|none>"),
                N_("uses per UTC day of chat, image, video or music"),
                self._quota,
            ),
            Subcommand(
                "skill",
                N_("/admin skill on|off <skill> [chat]"),
                N_("switch a skill in this chat or another (e.g. telegram:group:-100123)"),
                self._skill,
            ),
            Subcommand(
                "persona",
                N_('/admin persona add name=<name> [style="..." ...] | remove <name>'),
                N_("add or remove a persona"),
                self._persona,
            ),
            Subcommand(
                "model", N_("/admin model default <name>"), N_("the model of chats that chose none"), self._model
            ),
            Subcommand(
                "broadcast",
                N_("/admin broadcast <chat,chat,...|all> <text>"),
                N_("send a message to chats (all: every chat the bot knows)"),
                ops.broadcast,
            ),
            Subcommand("who", N_("/admin who <user>"), N_("a user's standing, usage and jobs"), ops.who),
            Subcommand(
                "approve",
                N_("/admin approve <code>"),
                N_("let in a user who sent a pairing code"),
                self._approve,
            ),
            Subcommand(
                "audit",
                N_("/admin audit [n]"),
                N_("the last n admin actions and refusals (default 20)"),
                self._audit_log,
            ),
        ]

    # --- dispatch -----------------------------------------------------------------------

    async def __call__(self, ctx: Context) -> None:
        t = ctx.t
        where = str(ctx.event.chat)
        name, _, rest = ctx.args.strip().partition(" ")
        name = name.lower() or "help"
        rest = rest.strip()
        sub = self.subcommands.get(name)
        if sub is None:
            await ctx.reply(t("Unknown subcommand '%(name)s'. Send /admin help for the list.", name=name))
            await self._audit.record(ctx.user, f"admin {name}"[:64], "invalid", chat=where, detail=rest)
            return
        private = name in PRIVATE_ANSWERS and ctx.event.chat.kind == "group"
        if private and ctx.event.channel not in PRIVATE_BY_USER_ID:
            await ctx.reply(t("That answer is only for you: ask me in a private chat."))
            await self._audit.record(ctx.user, f"admin {name}", "refused", chat=where, detail=f"{rest} (in a group)")
            return
        # An answer sent privately is said in the private chat's language.
        asked = dataclasses.replace(ctx, lang=await self._private_lang(ctx)) if private else ctx
        try:
            answer = await sub.run(asked, rest)
        except Invalid as exc:
            await ctx.reply(t("%(reason)s\nUsage: %(usage)s", reason=exc.text(t), usage=t(sub.usage)))
            await self._audit.record(ctx.user, f"admin {name}", "invalid", chat=where, detail=f"{rest} ({exc})")
            return
        except Exception:
            await self._audit.record(ctx.user, f"admin {name}", "error", chat=where, detail=rest)
            raise  # the router logs it and apologises
        log.info("event=admin action=%s actor=%s chat=%s", name, ctx.user, where)
        await self._audit.record(ctx.user, f"admin {name}", "ok", chat=where, detail=rest)
        if private:
            await self._answer_privately(ctx, answer)
            return
        await ctx.reply(answer)

    @staticmethod
    def _private_chat(ctx: Context) -> ChatRef:
        ev = ctx.event
        return ChatRef(ev.channel, "private", ev.sender.id)

    async def _private_lang(self, ctx: Context) -> Lang:
        return await self._languages.of_chat(str(self._private_chat(ctx)), ctx.event.context.get(HINT_KEY))

    async def _answer_privately(self, ctx: Context, answer: str) -> None:
        """Into the admin's private chat, through the outbox like any reply; a note in the group."""
        ev = ctx.event
        await self._outbox.put(
            NewMessage(
                target=self._private_chat(ctx),
                message=Message.of(answer),
                idempotency_key=f"{ev.channel}:{ev.id}:private",
            )
        )
        await ctx.reply(ctx.t(PRIVATE_NOTE))

    async def on_refusal(self, ctx: Context, reason: str) -> None:
        """The router's refusal hook: a non-admin tried an admin command."""
        command = ctx.command.name if ctx.command else ctx.skill
        first = ctx.args.strip().partition(" ")[0].lower()
        action = f"{command} {first}".strip()[:64]
        await self._audit.record(ctx.user, action, "refused", chat=str(ctx.event.chat), detail=f"{ctx.args} ({reason})")

    # --- subcommands --------------------------------------------------------------------

    async def _help(self, ctx: Context, rest: str) -> str:
        t = ctx.t
        lines = [t("Admin commands:")]
        lines += [t(HELP_LINE, usage=t(s.usage), what=t(s.description)) for s in self.subcommands.values()]
        lines.append(t("Skills: %(skills)s. Days and reset times are UTC.", skills=listing(t, SKILLS)))
        return "\n".join(lines)

    async def _ban(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 1:
            raise Invalid(NAME_ONE_USER)
        user = self._args.user(args[0])
        if await self._people.is_admin(user):
            raise Invalid(
                N_(
                    "%(user)s is an admin, and admins cannot be banned: remove them as admin first "
                    "(hub admin remove %(user)s)."
                ),
                user=user,
            )
        await self._users.set(user, banned=True)
        self._people.invalidate()
        return ctx.t("%(user)s is banned: the bot ignores everything they send.", user=user)

    async def _unban(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 1:
            raise Invalid(NAME_ONE_USER)
        user = self._args.user(args[0])
        if not (await self._users.get(user)).banned:
            return ctx.t("%(user)s was not banned.", user=user)
        await self._users.set(user, banned=False)
        self._people.invalidate()
        return ctx.t("%(user)s is no longer banned.", user=user)

    async def _quota(self, ctx: Context, rest: str) -> str:
        t = ctx.t
        args = self._args.words(rest)
        if len(args) != 3:
            raise Invalid(N_("Give a user (or default), a skill and a number per day."))
        subject = DEFAULT_SUBJECT if args[0].lower() == DEFAULT_SUBJECT else self._args.user(args[0])
        skill = args[1].lower()
        if skill not in SKILLS:
            raise Invalid(NO_SKILL, skill=args[1], skills=SKILLS)
        per_day: int | None
        if args[2].lower() in ("none", "off", "unlimited", "-"):
            per_day = None
        elif args[2].isdigit():
            per_day = int(args[2])
        else:
            raise Invalid(N_("'%(value)s' is not a number of uses per day (or none)."), value=args[2])
        await self._quotas.set(subject, skill, per_day)
        everyone = subject == DEFAULT_SUBJECT
        if per_day is not None:
            if everyone:
                return t.plural(
                    "Everyone without a quota of their own may now use %(skill)s %(n)s time per UTC day.",
                    "Everyone without a quota of their own may now use %(skill)s %(n)s times per UTC day.",
                    per_day,
                    skill=skill,
                )
            return t.plural(
                "%(user)s may now use %(skill)s %(n)s time per UTC day.",
                "%(user)s may now use %(skill)s %(n)s times per UTC day.",
                per_day,
                user=subject,
                skill=skill,
            )
        # What applies now: for `default`, the configured [quotas]; for a user, the default.
        admin = not everyone and await self._people.is_admin(subject)
        limit = await self._access.limit_for(subject, skill, is_admin=admin)
        if everyone and limit is None:
            return t(
                "Default quota for %(skill)s removed: everyone without a quota of their own now has no limit.",
                skill=skill,
            )
        if everyone and limit is not None:
            return t.plural(
                "Default quota for %(skill)s removed: everyone without a quota of their own now has the "
                "configured %(n)s use a day.",
                "Default quota for %(skill)s removed: everyone without a quota of their own now has the "
                "configured %(n)s uses a day.",
                limit,
                skill=skill,
            )
        if limit is None:
            return t("Quota override for %(skill)s removed: %(user)s now has no limit.", skill=skill, user=subject)
        return t.plural(
            "Quota override for %(skill)s removed: %(user)s now has the default, %(n)s use a day.",
            "Quota override for %(skill)s removed: %(user)s now has the default, %(n)s uses a day.",
            limit,
            skill=skill,
            user=subject,
        )

    async def _skill(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) not in (2, 3) or args[0].lower() not in ("on", "off"):
            raise Invalid(N_("Say on or off, then the skill, then optionally the chat."))
        on = args[0].lower() == "on"
        skill = args[1].lower()
        if skill not in SKILLS:
            raise Invalid(NO_SKILL, skill=args[1], skills=SKILLS)
        chat = self._args.chat(args[2]) if len(args) == 3 else ctx.event.chat
        await self._chats.set_skill(str(chat), skill, on)
        if on:
            return ctx.t("%(skill)s is now on in %(chat)s.", skill=skill, chat=str(chat))
        return ctx.t("%(skill)s is now off in %(chat)s.", skill=skill, chat=str(chat))

    async def _persona(self, ctx: Context, rest: str) -> str:
        t = ctx.t
        args = self._args.words(rest)
        if not args or args[0].lower() not in ("add", "remove"):
            raise Invalid(N_("Say add or remove."))
        if args[0].lower() == "remove":
            if len(args) != 2:
                raise Invalid(N_("Name one persona to remove."))
            found = await self._personas.get(args[1].removeprefix("name="))
            if found is None or not await self._personas.remove(found.name):
                names = [p.name for p in await self._personas.list()]
                if not names:
                    raise Invalid(N_("No persona '%(name)s': there are none."), name=args[1])
                raise Invalid(N_("No persona '%(name)s'. Personas: %(names)s."), name=args[1], names=names)
            if found.source == "config":
                return t(
                    "Persona %(name)s removed until the next start: it is in the configuration file, "
                    "remove it there for good.",
                    name=found.name,
                )
            return t("Persona %(name)s removed.", name=found.name)
        fields: dict[str, str] = {}
        for pair in args[1:]:
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise Invalid(N_("'%(pair)s' is not key=value."), pair=pair)
            fields[key.strip().lower()] = value
        name = fields.pop("name", "").strip()
        if not name:
            raise Invalid(N_("A persona needs a name: name=..."))
        if len(name) > 64:
            raise Invalid(N_("A persona's name is at most 64 characters."))
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise Invalid(N_("Unknown persona fields: %(fields)s. Known: %(known)s."), fields=unknown, known=FIELDS)
        try:
            persona = await self._personas.add(name, fields)
        except ValueError as exc:
            # The configuration's own check: field names and its messages, as in check-config.
            raise Invalid(N_("The persona does not fit: %(problems)s"), problems=str(exc)) from exc
        if persona.default:
            return t(
                "Persona %(name)s added and is now the default persona. A chat switches to it with /persona %(name)s",
                name=persona.name,
            )
        return t("Persona %(name)s added. A chat switches to it with /persona %(name)s", name=persona.name)

    async def _model(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 2 or args[0].lower() != "default":
            raise Invalid(N_("Say default and the model's name."))
        if args[1] not in self._models:
            if not self._models:
                raise Invalid(
                    N_("No model '%(name)s': the configuration has no models yet; add a [[models]] section."),
                    name=args[1],
                )
            raise Invalid(
                N_("No model '%(name)s' in the configuration (models: %(models)s)."), name=args[1], models=self._models
            )
        await self._kv.set("default_model", args[1])
        if self._model_changed is not None:
            self._model_changed()
        return ctx.t("The default model is now %(model)s.", model=args[1])

    async def _approve(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 1:
            raise Invalid(N_("Give the code the user received."))
        outcome, found = await self._pairing.approve(args[0], by=ctx.user)
        if outcome == "unknown" or found is None:
            raise Invalid(
                N_("No pairing code '%(code)s': check it with the user (writing to me again shows theirs)."),
                code=args[0].upper(),
            )
        if outcome == "expired":
            raise Invalid(
                N_("Code %(code)s has expired; %(user)s gets a new one by writing to the bot again."),
                code=found.code,
                user=found.user,
            )
        # Also for a code already approved: if the hub died right after approving it, this is the
        # same command handled again, and the user must still be let in and told (once: the key).
        await self._users.set(found.user, allowed=True)
        self._access.forget(found.user)
        # In the user's chat's language, not the admin's.
        told = texts(await self._languages.of_chat(found.chat))
        await self._outbox.put(
            NewMessage(
                target=ChatRef.parse(found.chat),
                message=Message.of(told(APPROVED_NOTICE)),
                origin="pairing",
                idempotency_key=f"pairing:{found.code}",
            )
        )
        if outcome == "already":
            return ctx.t("Code %(code)s was already approved (%(user)s).", code=found.code, user=found.user)
        return ctx.t("Approved %(user)s; they have been told.", user=found.user)

    async def _audit_log(self, ctx: Context, rest: str) -> str:
        t = ctx.t
        args = self._args.words(rest)
        if len(args) > 1 or (args and not args[0].isdigit()):
            raise Invalid(N_("Give how many entries to show, or nothing."))
        n = max(1, min(100, int(args[0]) if args else 20))
        entries = await self._audit.recent(n)
        if not entries:
            return t("The audit log is empty.")
        lines = [
            t.plural(
                "Last %(n)s audit entry (UTC, newest first):",
                "Last %(n)s audit entries (UTC, newest first):",
                len(entries),
            )
        ]
        # The entries themselves (action, outcome, detail) are recorded in English, as operators grep them.
        for e in entries:
            row = {"at": f"{e.at:%Y-%m-%d %H:%M:%S}", "actor": e.actor, "chat": e.chat or "-", "action": e.action}
            if e.detail:
                lines.append(
                    t(
                        "%(at)s %(actor)s in %(chat)s: %(action)s → %(outcome)s %(detail)s",
                        **row,
                        outcome=e.outcome,
                        detail=e.detail[:80],
                    )
                )
            else:
                lines.append(t("%(at)s %(actor)s in %(chat)s: %(action)s → %(outcome)s", **row, outcome=e.outcome))
        return "\n".join(lines)
