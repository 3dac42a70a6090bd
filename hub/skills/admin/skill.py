"""`/admin`: run the hub from the chat app. Admins only; every action and refusal is audited.

This module holds the command's dispatch and the subcommands that change who may do what
(ban, quota, skill, persona, model, approve) or read the audit log; `ops.py` holds the
ones that look at and steer the running hub (status, jobs, job, who, broadcast).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping

from hub.delivery import Outbox
from hub.events import ChatRef, Message
from hub.routing.access import SKILLS, AccessControl
from hub.routing.context import Context
from hub.routing.people import People
from hub.skills.admin.args import AdminArgs, Invalid, Subcommand
from hub.skills.admin.ops import AdminOps
from hub.skills.admin.repos import AdminRepos
from hub.storage.admin import DEFAULT_SUBJECT
from hub.storage.outbox import NewMessage

log = logging.getLogger("hub.admin")
# Answers that name people and what they did: never into a group where every member reads them.
PRIVATE_ANSWERS = frozenset({"who", "audit"})
# Platforms where a user's private chat with the bot has the user's own id (Telegram).
PRIVATE_BY_USER_ID = frozenset({"telegram"})
# Telegram delivers only to someone who has started a chat with the bot: say so.
PRIVATE_NOTE = "I sent you the answer in a private chat (if it does not arrive, start a chat with me first)."


class AdminSkill:
    """The `/admin` command. `ops.py` does the read-mostly half (status, jobs, broadcast)."""

    def __init__(
        self,
        *,
        repos: AdminRepos,
        people: People,
        access: AccessControl,
        outbox: Outbox,
        ops: AdminOps,
        args: AdminArgs,
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
        self._models = tuple(model_names)
        # `[wechat] allow_admin_in_plain_mode`: trust bodies no signature covers.
        # Lets the chat skill drop its cached default at once, in this process.
        self._model_changed = model_changed
        self.subcommands: Mapping[str, Subcommand] = {s.name: s for s in self._table(ops)}

    def _table(self, ops: AdminOps) -> list[Subcommand]:
        """The subcommands, in the order `/admin help` lists them."""
        return [
            Subcommand("help", "/admin help", "this list", self._help),
            Subcommand(
                "status", "/admin status", "uptime, channels, backlogs, jobs, failures in the last hour", ops.status
            ),
            Subcommand("jobs", "/admin jobs [state]", "recent jobs, optionally in one state", ops.jobs),
            Subcommand("job", "/admin job <id> retry|cancel", "retry a failed job or cancel a running one", ops.job),
            Subcommand("ban", "/admin ban <user>", "ignore everything from a user (e.g. telegram:123)", self._ban),
            Subcommand("unban", "/admin unban <user>", "listen to a banned user again", self._unban),
            Subcommand(
                "quota",
                "/admin quota <user|default> <skill> <per day|none>",
                "uses per UTC day of chat, image, video or music",
                self._quota,
            ),
            Subcommand(
                "skill",
                "/admin skill on|off <skill> [chat]",
                "switch a skill in this chat or another (e.g. telegram:group:-100123)",
                self._skill,
            ),
            Subcommand(
                "persona",
                '/admin persona add name=<name> [style="..." ...] | remove <name>',
                "add or remove a persona",
                self._persona,
            ),
            Subcommand("model", "/admin model default <name>", "the model of chats that chose none", self._model),
            Subcommand(
                "broadcast",
                "/admin broadcast <chat,chat,...|all> <text>",
                "send a message to chats (all: every chat the bot knows)",
                ops.broadcast,
            ),
            Subcommand("who", "/admin who <user>", "a user's standing, usage and jobs", ops.who),
            Subcommand("approve", "/admin approve <code>", "let in a user who sent a pairing code", self._approve),
            Subcommand(
                "audit", "/admin audit [n]", "the last n admin actions and refusals (default 20)", self._audit_log
            ),
        ]

    # --- dispatch -----------------------------------------------------------------------

    async def __call__(self, ctx: Context) -> None:
        where = str(ctx.event.chat)
        name, _, rest = ctx.args.strip().partition(" ")
        name = name.lower() or "help"
        rest = rest.strip()
        if not ctx.is_admin:
            # The router refuses first; this guards a wiring that forgot `admin_only`.
            await ctx.reply("Sorry, that command is for the bot's admins only.")
            await self._audit.record(ctx.user, f"admin {name}", "refused", chat=where, detail=rest)
            return
        sub = self.subcommands.get(name)
        if sub is None:
            await ctx.reply(f"Unknown subcommand {name!r}. Send /admin help for the list.")
            await self._audit.record(ctx.user, f"admin {name}"[:64], "invalid", chat=where, detail=rest)
            return
        private = name in PRIVATE_ANSWERS and ctx.event.chat.kind == "group"
        if private and ctx.event.channel not in PRIVATE_BY_USER_ID:
            await ctx.reply("That answer is only for you: ask me in a private chat.")
            await self._audit.record(ctx.user, f"admin {name}", "refused", chat=where, detail=f"{rest} (in a group)")
            return
        try:
            answer = await sub.run(ctx, rest)
        except Invalid as exc:
            await ctx.reply(f"{exc}\nUsage: {sub.usage}")
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

    async def _answer_privately(self, ctx: Context, answer: str) -> None:
        """Into the admin's private chat, through the outbox like any reply; a note in the group."""
        ev = ctx.event
        await self._outbox.put(
            NewMessage(
                target=ChatRef(ev.channel, "private", ev.sender.id),
                message=Message.of(answer),
                idempotency_key=f"{ev.channel}:{ev.id}:private",
            )
        )
        await ctx.reply(PRIVATE_NOTE)

    async def on_refusal(self, ctx: Context, reason: str) -> None:
        """The router's refusal hook: a non-admin tried an admin command."""
        command = ctx.command.name if ctx.command else ctx.skill
        first = ctx.args.strip().partition(" ")[0].lower()
        action = f"{command} {first}".strip()[:64]
        await self._audit.record(ctx.user, action, "refused", chat=str(ctx.event.chat), detail=f"{ctx.args} ({reason})")

    # --- subcommands --------------------------------------------------------------------

    async def _help(self, ctx: Context, rest: str) -> str:
        lines = ["Admin commands:"]
        lines += [f"{s.usage} — {s.description}" for s in self.subcommands.values()]
        lines.append(f"Skills: {', '.join(SKILLS)}. Days and reset times are UTC.")
        return "\n".join(lines)

    async def _ban(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 1:
            raise Invalid("Name one user.")
        user = self._args.user(args[0])
        if await self._people.is_admin(user):
            raise Invalid(f"{user} is an admin; admins cannot be banned (remove them as admin first).")
        await self._users.set(user, banned=True)
        self._people.invalidate()
        return f"{user} is banned: the bot ignores everything they send."

    async def _unban(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 1:
            raise Invalid("Name one user.")
        user = self._args.user(args[0])
        if not (await self._users.get(user)).banned:
            return f"{user} was not banned."
        await self._users.set(user, banned=False)
        self._people.invalidate()
        return f"{user} is no longer banned."

    async def _quota(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 3:
            raise Invalid("Give a user (or default), a skill and a number per day.")
        subject = DEFAULT_SUBJECT if args[0].lower() == DEFAULT_SUBJECT else self._args.user(args[0])
        skill = args[1].lower()
        if skill not in SKILLS:
            raise Invalid(f"No skill {args[1]!r}: choose one of {', '.join(SKILLS)}.")
        per_day: int | None
        if args[2].lower() in ("none", "off", "unlimited", "-"):
            per_day = None
        elif args[2].isdigit():
            per_day = int(args[2])
        else:
            raise Invalid(f"{args[2]!r} is not a number of uses per day (or none).")
        await self._quotas.set(subject, skill, per_day)
        who = "Everyone without a quota of their own" if subject == DEFAULT_SUBJECT else subject
        if per_day is None:
            limit = await self._access.limit_for(subject, skill) if subject != DEFAULT_SUBJECT else None
            now = "no limit" if limit is None else f"{limit} a day (the default)"
            return f"Quota override for {skill} removed: {who} now has {now}."
        return f"{who} may now use {skill} {per_day} time{'' if per_day == 1 else 's'} per UTC day."

    async def _skill(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) not in (2, 3) or args[0].lower() not in ("on", "off"):
            raise Invalid("Say on or off, then the skill, then optionally the chat.")
        on = args[0].lower() == "on"
        skill = args[1].lower()
        if skill not in SKILLS:
            raise Invalid(f"No skill {args[1]!r}: choose one of {', '.join(SKILLS)}.")
        chat = self._args.chat(args[2]) if len(args) == 3 else ctx.event.chat
        await self._chats.set_skill(str(chat), skill, on)
        return f"{skill} is now {'on' if on else 'off'} in {chat}."

    async def _persona(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if not args or args[0].lower() not in ("add", "remove"):
            raise Invalid("Say add or remove.")
        if args[0].lower() == "remove":
            if len(args) != 2:
                raise Invalid("Name one persona to remove.")
            found = await self._personas.get(args[1].removeprefix("name="))
            if found is None or not await self._personas.remove(found.name):
                raise Invalid(f"No persona {args[1]!r}.")
            if found.source == "config":
                return f"Persona {found.name} removed until the next start (it is in the configuration file)."
            return f"Persona {found.name} removed."
        fields: dict[str, str] = {}
        for pair in args[1:]:
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise Invalid(f"{pair!r} is not key=value.")
            fields[key.strip().lower()] = value
        name = fields.pop("name", "")
        if not name.strip():
            raise Invalid("A persona needs a name: name=...")
        try:
            persona = await self._personas.add(name, fields)
        except ValueError as exc:
            raise Invalid(str(exc)) from exc
        default = " It is now the default persona." if persona.default else ""
        return f"Persona {persona.name} added.{default} A chat switches to it with /persona {persona.name}"

    async def _model(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 2 or args[0].lower() != "default":
            raise Invalid("Say default and the model's name.")
        if args[1] not in self._models:
            known = ", ".join(self._models) or "none configured"
            raise Invalid(f"No model {args[1]!r} in the configuration (models: {known}).")
        await self._kv.set("default_model", args[1])
        if self._model_changed is not None:
            self._model_changed()
        return f"The default model is now {args[1]}."

    async def _approve(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) != 1:
            raise Invalid("Give the code the user received.")
        outcome, found = await self._pairing.approve(args[0], by=ctx.user)
        if outcome == "unknown" or found is None:
            raise Invalid(f"No pairing code {args[0].upper()!r}.")
        if outcome == "expired":
            raise Invalid(f"Code {found.code} has expired; {found.user} gets a new one by writing to the bot again.")
        # Also for a code already approved: if the hub died right after approving it, this is the
        # same command handled again, and the user must still be let in and told (once: the key).
        await self._users.set(found.user, allowed=True)
        self._access.forget(found.user)
        await self._outbox.put(
            NewMessage(
                target=ChatRef.parse(found.chat),
                message=Message.of("An admin approved you: you can talk to me now. Send /help to see what I can do."),
                origin="pairing",
                idempotency_key=f"pairing:{found.code}",
            )
        )
        if outcome == "already":
            return f"Code {found.code} was already approved ({found.user})."
        return f"Approved {found.user}; they have been told."

    async def _audit_log(self, ctx: Context, rest: str) -> str:
        args = self._args.words(rest)
        if len(args) > 1 or (args and not args[0].isdigit()):
            raise Invalid("Give how many entries to show, or nothing.")
        n = max(1, min(100, int(args[0]) if args else 20))
        entries = await self._audit.recent(n)
        if not entries:
            return "The audit log is empty."
        lines = [f"Last {len(entries)} audit entries (UTC, newest first):"]
        for e in entries:
            detail = f" {e.detail[:80]}" if e.detail else ""
            lines.append(f"{e.at:%Y-%m-%d %H:%M:%S} {e.actor} in {e.chat or '-'}: {e.action} → {e.outcome}{detail}")
        return "\n".join(lines)
