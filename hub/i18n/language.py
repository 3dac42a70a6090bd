"""Which language a chat is answered in (DESIGN.md's order).

What `/lang` set for the chat, else the chat's persona's `language`, else `[bot] language` when
it is `zh` or `en`, else (`auto`) the platform's hint: the sender's own language where the
platform tells it (Telegram's `language_code`, the web page's `Accept-Language`), Chinese on the
Chinese platforms, else English.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hub.events import Event
from hub.i18n.texts import Lang
from hub.storage.chats import ChatSettings

# Platforms whose users write Chinese: their hint, when the event carries none of its own.
CHINESE_PLATFORMS = frozenset({"wechat", "wecom", "feishu", "qq", "onebot"})
# The event context key a channel puts the sender's own language tag under.
HINT_KEY = "lang"


def from_tag(tag: object) -> Lang | None:
    """`zh-hans`, `zh_CN`, `en-US` → zh / en; anything else → None."""
    if not isinstance(tag, str):
        return None
    primary = tag.strip().lower().replace("_", "-").split("-", 1)[0]
    if primary == "zh":
        return "zh"
    if primary == "en":
        return "en"
    return None


def from_accept_language(header: str | None, *, limit: int = 20) -> Lang | None:
    """The first of zh / en by preference in an `Accept-Language` header (None: neither)."""
    if not header:
        return None
    ranked: list[tuple[float, int, Lang]] = []
    for i, item in enumerate(header[:1000].split(",")[:limit]):
        tag, _, params = item.partition(";")
        lang = from_tag(tag)
        if lang is None:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            ranked.append((-q, i, lang))
    return min(ranked)[2] if ranked else None


def choose(*, chat: str | None, persona: str | None, bot: str, channel: str, hint: object = None) -> Lang:
    """The language of one chat, by the order above."""
    return choose_why(chat=chat, persona=persona, bot=bot, channel=channel, hint=hint)[0]


# Where a chat's language came from, as `choose_why` says it.
SET, PERSONA, BOT, HINT, PLATFORM, FALLBACK = "set", "persona", "bot", "hint", "platform", "fallback"


def choose_why(
    *, chat: str | None, persona: str | None, bot: str, channel: str, hint: object = None
) -> tuple[Lang, str]:
    """`choose`, with which rule decided (for `/lang` alone)."""
    for chosen, why in ((chat, SET), (persona, PERSONA), (bot if bot != "auto" else None, BOT)):
        found = from_tag(chosen) if chosen else None
        if found is not None:
            return found, why
    found = from_tag(hint)
    if found is not None:
        return found, HINT
    return ("zh", PLATFORM) if channel in CHINESE_PLATFORMS else ("en", FALLBACK)


class ChatLanguages:
    """The language of a chat, for the router (per event) and for notices sent later (jobs)."""

    def __init__(
        self,
        *,
        chats: Callable[[str], Awaitable[ChatSettings]],
        persona_language: Callable[[ChatSettings], Awaitable[str | None]],
        bot: str,
    ) -> None:
        self._chats = chats
        self._persona_language = persona_language
        self._bot = bot

    async def why(self, chat: ChatSettings, channel: str, hint: object = None) -> tuple[Lang, str]:
        persona = None if from_tag(chat.language) else await self._persona_language(chat)
        return choose_why(chat=chat.language, persona=persona, bot=self._bot, channel=channel, hint=hint)

    async def of_event(self, event: Event, chat: ChatSettings) -> Lang:
        return (await self.why(chat, event.channel, event.context.get(HINT_KEY)))[0]

    async def of_chat(self, ref: str, hint: object = None) -> Lang:
        """The language of the chat `ref` (a ChatRef's string form), outside any event."""
        return (await self.why(await self._chats(ref), ref.split(":", 1)[0], hint))[0]

    async def of_new_chat(self, channel: str, hint: object = None) -> Lang:
        """The language a chat nothing was set for yet starts in (the web page before it
        names its session)."""
        return (await self.why(ChatSettings(f"{channel}:"), channel, hint))[0]


def platform_languages() -> ChatLanguages:
    """Languages by the platform and its hint alone: for a channel built without the hub's."""

    async def unset(ref: str) -> ChatSettings:
        return ChatSettings(ref)

    async def no_persona(chat: ChatSettings) -> str | None:
        return None

    return ChatLanguages(chats=unset, persona_language=no_persona, bot="auto")
