"""The typed context a skill runs with, and the handler and middleware shapes around it.

Access control, the router and the skills all import this module and nothing of each other, so
none of them imports another in a loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from hub.events import Event, Message
from hub.i18n import Lang, Texts, texts
from hub.routing.commands import CommandObject
from hub.storage.chats import ChatSettings


class ReplyStream(Protocol):
    """A reply that arrives piece by piece (model tokens)."""

    async def push(self, delta: str) -> None: ...

    async def finish(self) -> None:
        """The reply is complete: deliver or record the whole text."""
        ...

    @property
    def text(self) -> str: ...


class Replier(Protocol):
    async def reply(self, message: Message, *, quote: bool = True) -> None: ...

    def stream(self) -> ReplyStream: ...

    async def action(self, kind: str = "typing") -> None: ...


@dataclass(slots=True)
class Context:
    event: Event
    command: CommandObject | None
    chat: ChatSettings
    is_admin: bool
    replier: Replier
    # The skill name the router matched (for quotas and audit): chat, image, video, music, ...
    skill: str = ""
    # The language this chat is answered in (hub/i18n/language.py says how it is chosen).
    lang: Lang = "en"

    @property
    def t(self) -> Texts:
        """This chat's texts: `ctx.t("Cancelled %(job)s.", job=ref)`."""
        return texts(self.lang)

    @property
    def args(self) -> str:
        """The command's arguments, or the whole text of a plain message."""
        return self.command.args if self.command else self.event.message.text

    @property
    def user(self) -> str:
        return self.event.sender.key

    async def reply(self, message: Message | str, *, quote: bool = True) -> None:
        msg = Message.of(message) if isinstance(message, str) else message
        await self.replier.reply(msg, quote=quote)

    def stream(self) -> ReplyStream:
        return self.replier.stream()

    async def action(self, kind: str = "typing") -> None:
        await self.replier.action(kind)


Skill = Callable[[Context], Awaitable[None]]

Handler = Callable[[Event, Context], Awaitable[None]]
Middleware = Callable[[Handler, Event, Context], Awaitable[None]]
