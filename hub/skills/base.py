"""The Skill interface: a skill is an async callable taking a typed Context.

Skills never import a channel: everything they send goes through `ctx.reply` / `ctx.stream`,
which the dispatcher backs with the outbox (or a live stream, where one is open).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from hub.events import Event, Message
from hub.storage.chats import ChatSettings


@dataclass(frozen=True, slots=True)
class CommandObject:
    """A parsed `/command@bot args`: `name` is the canonical command after alias lookup."""

    name: str
    args: str = ""
    mention: str | None = None
    raw_name: str = ""
    # The command named another bot (`/help@OtherBot`): not for us.
    foreign: bool = False


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
    extras: dict[str, object] = field(default_factory=dict)

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


@dataclass(frozen=True, slots=True)
class SkillInfo:
    """What `/help` shows and who may use a command."""

    name: str
    handler: Skill
    description: str
    usage: str = ""
    admin_only: bool = False
    # The switchable skill behind the command, for `/admin skill` and quotas.
    skill: str | None = None
    aliases: tuple[str, ...] = ()
