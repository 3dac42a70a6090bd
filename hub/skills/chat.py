"""The chat skill: plain text to the chat's model, in the chat's persona, with its memory."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hub.errors import ProviderError
from hub.events import ChatRef
from hub.i18n import N_
from hub.routing.context import Context
from hub.skills.prompt import Msg, build_messages, opening, reply_reserve, tokens_of
from hub.storage.cached import Cached
from hub.storage.chats import ChatRepo, ChatSettings, KeyValueRepo
from hub.storage.memory import MemoryRepo, estimate_tokens, speaker_content
from hub.storage.personas import Persona, PersonaRepo

if TYPE_CHECKING:  # the gateway imports the model SDK: only when models are configured
    from hub.providers.chat_models import ModelGateway

log = logging.getLogger("hub.chat")

# msgids: said with ctx.t(...) in the chat's language.
NO_MODEL = N_(
    "No chat model is configured yet: whoever runs this hub can add a [[models]] entry (name, base_url, "
    "api_key, model) to config/hub.toml and restart the hub."
)
MODEL_DOWN = N_("The model is not answering right now, please try again in a minute.")
EMPTY_ANSWER = N_("The model gave an empty answer, please try again or put it another way.")
TEXT_ONLY = N_("I can only read text for now: please write your message.")
# Where an admin's `/admin model default <name>` keeps its choice.
DEFAULT_MODEL_KEY = "default_model"
TYPING_EVERY_S = 4.0


class NoModelChat:
    """What plain text gets while no model is configured: how to configure one."""

    async def __call__(self, ctx: Context) -> None:
        await ctx.reply(ctx.t(NO_MODEL))


class ModelChoice:
    """Which model a chat talks to: its own choice, else the admins' default, else the
    configuration's. The admins' default is read at most every `ttl_s`."""

    def __init__(self, gateway: ModelGateway, kv: KeyValueRepo, ttl_s: float = 2.0) -> None:
        self._gateway = gateway
        self._kv = kv
        self._cached: Cached[str | None] = Cached(self._read, ttl_s)

    async def default(self) -> str:
        return await self._cached.get() or self._gateway.default

    async def _read(self) -> str | None:
        stored = await self._kv.get(DEFAULT_MODEL_KEY)
        return self._gateway.find(stored) if isinstance(stored, str) else None

    def forget(self) -> None:
        """Read the admins' default again at the next message (after changing it here)."""
        self._cached.invalidate()

    @property
    def names(self) -> list[str]:
        return self._gateway.names

    def find(self, name: str) -> str | None:
        return self._gateway.find(name)

    async def for_chat(self, chat: ChatSettings) -> str:
        if chat.model:
            found = self._gateway.find(chat.model)
            if found is not None:
                return found
        return await self.default()


async def persona_for(personas: PersonaRepo, chat: ChatSettings) -> Persona | None:
    """The chat's persona: its choice while that exists, else the default (None: plain)."""
    if chat.persona:
        found = await personas.get(chat.persona)
        if found is not None:
            return found
    return await personas.default()


class PersonaGreeting:
    """What a new follower is told (the channels' `Greeting`): the greeting of the chat's
    persona, or of the default one; None for the channel's own welcome."""

    def __init__(self, chats: ChatRepo, personas: PersonaRepo) -> None:
        self._chats = chats
        self._personas = personas

    async def __call__(self, chat: ChatRef) -> str | None:
        try:
            persona = await persona_for(self._personas, await self._chats.get(str(chat)))
        except Exception:  # the greeting is a courtesy: never worth failing the callback for
            log.exception("event=greeting_failed chat=%s", chat)
            return None
        return (persona.greeting.strip() if persona else "") or None


class ChatSkill:
    def __init__(
        self,
        gateway: ModelGateway,
        models: ModelChoice,
        memory: MemoryRepo,
        personas: PersonaRepo,
        *,
        typing_every_s: float = TYPING_EVERY_S,
    ) -> None:
        self._gateway = gateway
        self._models = models
        self._memory = memory
        self._personas = personas
        self._typing_every = typing_every_s

    async def __call__(self, ctx: Context) -> None:
        text = ctx.event.message.text
        if not text:
            await ctx.reply(ctx.t(TEXT_ONLY))
            return
        chat = str(ctx.event.chat)
        model = await self._models.for_chat(ctx.chat)
        persona = await persona_for(self._personas, ctx.chat)
        group = ctx.event.chat.kind == "group"
        speaker = (ctx.event.sender.name or ctx.event.sender.id) if group else None
        messages, history_turns = await self._messages(chat, model, persona, speaker_content(text, speaker), group)

        stream = ctx.stream()
        typing = asyncio.create_task(self._keep_typing(ctx))

        async def on_delta(delta: str) -> None:
            typing.cancel()
            await stream.push(delta)

        try:
            result = await self._gateway.complete(model, messages, on_delta)
        except ProviderError as exc:
            log.warning(
                "event=chat_failed id=%s chat=%s model=%s partial_chars=%d error=%s",
                ctx.event.id,
                chat,
                model,
                len(stream.text),
                exc,
            )
            # After a partial answer, the apology is a paragraph of its own.
            if stream.text:
                await stream.push("\n\n" + ctx.t(MODEL_DOWN))
                await stream.finish()
            else:
                await ctx.reply(ctx.t(MODEL_DOWN))
            return
        finally:
            typing.cancel()
        if not result.text.strip():
            await ctx.reply(ctx.t(EMPTY_ANSWER))
            return
        await stream.finish()
        log.info(
            "event=chat_reply id=%s chat=%s model=%s persona=%s history_turns=%d first_ms=%.0f total_ms=%.0f",
            ctx.event.id,
            chat,
            model,
            persona.name if persona else "-",
            history_turns,
            result.first_token_s * 1000,
            result.total_s * 1000,
        )
        try:
            await self._memory.add_exchange(chat, user=text, assistant=result.text, name=speaker, event_id=ctx.event.id)
        except Exception:
            # The answer is out; a lost memory turn is not worth an apology.
            log.exception("event=memory_store_failed id=%s chat=%s", ctx.event.id, chat)

    async def _messages(
        self, chat: str, model: str, persona: Persona | None, user_turn: str, group: bool
    ) -> tuple[list[Msg], int]:
        """The request for the model, with as much history as its context holds; and how many
        turns of history that is."""
        settings = self._gateway.settings(model)
        head = opening(persona, group=group)
        budget = (
            settings.context_length
            - reply_reserve(settings.context_length, settings.max_tokens)
            - tokens_of(head)
            - estimate_tokens(user_turn)
        )
        history = await self._memory.recent(chat, max(0, budget))
        return build_messages(head, history, user_turn), len(history)

    async def _keep_typing(self, ctx: Context) -> None:
        """Show "typing…" until the first token (platforms drop it after about 5 s)."""
        while True:
            await ctx.action("typing")
            await asyncio.sleep(self._typing_every)
