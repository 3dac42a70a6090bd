"""What an admin types after `/admin <subcommand>`: words, users and chats, checked."""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from hub.events import ChatRef
from hub.routing.context import Context

USER_RE = re.compile(r"^([a-z][a-z0-9_]*):(\S+)$")


class Invalid(Exception):
    """The admin's input does not fit: the message goes back with the subcommand's usage."""


@dataclass(frozen=True, slots=True)
class Subcommand:
    name: str
    usage: str
    description: str
    # Does the work and returns the answer for the admin; raises Invalid for bad input.
    run: Callable[[Context, str], Awaitable[str]]


class AdminArgs:
    """Parses arguments; users and chats must name a channel this hub knows."""

    def __init__(self, channel_names: Collection[str]) -> None:
        self._channels = frozenset(channel_names)

    @staticmethod
    def words(rest: str) -> list[str]:
        """Shell-like words, so values may be quoted: `style="warm, brief"`."""
        try:
            return shlex.split(rest)
        except ValueError as exc:
            raise Invalid(f"Cannot read the arguments: {exc}.") from exc

    def user(self, text: str) -> str:
        """A user named as `<channel>:<id>`, e.g. `telegram:123`."""
        text = text.strip()
        m = USER_RE.match(text)
        if m is None or m.group(2).split(":", 1)[0] in ("private", "group"):
            raise Invalid(f"{text!r} is not a user: write <channel>:<user id>, e.g. telegram:123")
        if m.group(1) not in self._channels:
            raise Invalid(f"{text!r}: there is no channel {m.group(1)!r}.")
        return text

    def chat(self, text: str) -> ChatRef:
        """A chat named as `<channel>:<kind>:<chat id>`, e.g. `telegram:group:-100123`."""
        try:
            ref = ChatRef.parse(text.strip())
        except ValueError as exc:
            raise Invalid(f"{text!r} is not a chat: write e.g. telegram:group:-100123") from exc
        if ref.channel not in self._channels:
            raise Invalid(f"{text!r}: there is no channel {ref.channel!r}.")
        return ref
