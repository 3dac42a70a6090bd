"""`/persona [name]`, `/reset`, `/model [name]`: the chat's character, memory and model."""

from __future__ import annotations

from hub.routing.context import Context
from hub.skills.chat import NO_MODEL, ModelChoice, persona_for
from hub.storage.chats import ChatRepo
from hub.storage.memory import MemoryRepo
from hub.storage.personas import PersonaRepo


class ChatCommands:
    """The three commands; `models` is None while no model is configured."""

    def __init__(self, chats: ChatRepo, memory: MemoryRepo, personas: PersonaRepo, models: ModelChoice | None) -> None:
        self._chats = chats
        self._memory = memory
        self._personas = personas
        self._models = models

    async def persona(self, ctx: Context) -> None:
        ref = str(ctx.event.chat)
        every = await self._personas.list()
        current = await persona_for(self._personas, ctx.chat)
        if not ctx.args:
            if not every:
                await ctx.reply("No personas are set up: I answer as a plain assistant.")
                return
            names = ", ".join(p.name + (" (current)" if current and p.name == current.name else "") for p in every)
            now = f"This chat talks to {current.name}." if current else "This chat talks to the plain assistant."
            await ctx.reply(f"{now}\nPersonas: {names}\nSwitch with /persona <name>.")
            return
        chosen = await self._personas.get(ctx.args)
        if chosen is None:
            known = ", ".join(p.name for p in every) or "none"
            await ctx.reply(f"There is no persona called {ctx.args}. Personas: {known}.")
            return
        await self._chats.update(ref, persona=chosen.name)
        await ctx.reply(chosen.greeting.strip() or f"This chat now talks to {chosen.name}.")

    async def reset(self, ctx: Context) -> None:
        await self._memory.clear(str(ctx.event.chat))
        await ctx.reply("Memory cleared: this conversation starts afresh.")

    async def model(self, ctx: Context) -> None:
        if self._models is None:
            await ctx.reply(NO_MODEL)
            return
        gateway_names = self._models.names
        current = await self._models.for_chat(ctx.chat)
        if not ctx.args:
            default = await self._models.default()
            names = ", ".join(
                n + (" (current)" if n == current else "") + (" (default)" if n == default else "")
                for n in gateway_names
            )
            await ctx.reply(f"This chat uses {current}.\nModels: {names}\nSwitch with /model <name>.")
            return
        found = self._models.find(ctx.args)
        if found is None:
            await ctx.reply(f"There is no model called {ctx.args}. Models: {', '.join(gateway_names)}.")
            return
        await self._chats.update(str(ctx.event.chat), model=found)
        await ctx.reply(f"This chat now uses {found}.")
