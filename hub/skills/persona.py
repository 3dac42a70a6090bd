"""`/persona [name]`, `/reset`, `/model [name]`: the chat's character, memory and model."""

from __future__ import annotations

from collections.abc import Iterable

from hub.i18n import Texts
from hub.routing.context import Context
from hub.skills.chat import NO_MODEL, ModelChoice, persona_for
from hub.storage.chats import ChatRepo
from hub.storage.memory import MemoryRepo
from hub.storage.personas import PersonaRepo

# How a list of names is written.
SEPARATOR = {"zh": "、", "en": ", "}


def _names(t: Texts, names: Iterable[str]) -> str:
    return SEPARATOR[t.lang].join(names)


class ChatCommands:
    """The three commands; `models` is None while no model is configured."""

    def __init__(self, chats: ChatRepo, memory: MemoryRepo, personas: PersonaRepo, models: ModelChoice | None) -> None:
        self._chats = chats
        self._memory = memory
        self._personas = personas
        self._models = models

    async def persona(self, ctx: Context) -> None:
        t = ctx.t
        ref = str(ctx.event.chat)
        every = await self._personas.list()
        current = await persona_for(self._personas, ctx.chat)
        if not ctx.args:
            if not every:
                await ctx.reply(
                    t(
                        "No personas are set up: I answer as a plain assistant. Whoever runs this hub can add "
                        "[[personas]] entries to config/hub.toml."
                    )
                )
                return
            names = _names(
                t,
                (t("%(name)s (current)", name=p.name) if current and p.name == current.name else p.name for p in every),
            )
            if current:
                text = t(
                    "This chat talks to %(name)s.\nPersonas: %(names)s\nSwitch with /persona <name>.",
                    name=current.name,
                    names=names,
                )
            else:
                text = t(
                    "This chat talks to the plain assistant.\nPersonas: %(names)s\nSwitch with /persona <name>.",
                    names=names,
                )
            await ctx.reply(text)
            return
        chosen = await self._personas.get(ctx.args)
        if chosen is None:
            if every:
                known = _names(t, (p.name for p in every))
                await ctx.reply(
                    t("There is no persona called %(name)s. Personas: %(names)s.", name=ctx.args, names=known)
                )
            else:
                await ctx.reply(
                    t("There is no persona called %(name)s: no personas are set up on this hub.", name=ctx.args)
                )
            return
        await self._chats.update(ref, persona=chosen.name)
        await ctx.reply(chosen.greeting.strip() or t("This chat now talks to %(name)s.", name=chosen.name))

    async def reset(self, ctx: Context) -> None:
        await self._memory.clear(str(ctx.event.chat))
        await ctx.reply(ctx.t("Memory cleared: this conversation starts afresh."))

    async def model(self, ctx: Context) -> None:
        t = ctx.t
        if self._models is None:
            await ctx.reply(t(NO_MODEL))
            return
        gateway_names = self._models.names
        current = await self._models.for_chat(ctx.chat)
        if not ctx.args:
            default = await self._models.default()
            names = _names(t, (_model_label(t, n, current=n == current, default=n == default) for n in gateway_names))
            await ctx.reply(
                t(
                    "This chat uses %(model)s.\nModels: %(names)s\nSwitch with /model <name>.",
                    model=current,
                    names=names,
                )
            )
            return
        found = self._models.find(ctx.args)
        if found is None:
            await ctx.reply(
                t(
                    "There is no model called %(name)s. Models: %(names)s.",
                    name=ctx.args,
                    names=_names(t, gateway_names),
                )
            )
            return
        await self._chats.update(str(ctx.event.chat), model=found)
        await ctx.reply(t("This chat now uses %(model)s.", model=found))


def _model_label(t: Texts, name: str, *, current: bool, default: bool) -> str:
    if current and default:
        return t("%(name)s (current, default)", name=name)
    if current:
        return t("%(name)s (current)", name=name)
    if default:
        return t("%(name)s (default)", name=name)
    return name
