"""What an admin types after `/admin <subcommand>`: words, users and chats, checked."""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass

from hub.events import ChatRef
from hub.i18n import N_, Texts, texts
from hub.routing.context import Context

USER_RE = re.compile(r"^([a-z][a-z0-9_]*):(\S+)$")
# i18n: between the items of a list (skill names, users, chats, states): "chat, image" / "chat、image".
SEPARATOR = N_(", ")


def listing(t: Texts, items: Iterable[object]) -> str:
    """Items as a list in the chat's language: `chat, image, video` / `chat、image、video`."""
    return t(SEPARATOR).join(map(str, items))


class Invalid(Exception):
    """The admin's input does not fit: the message goes back with the subcommand's usage.

    Raised with a msgid (marked with N_) and its values (a list or tuple is shown as a list);
    the admin reads it in the chat's language, the audit log keeps it in English (`str(exc)`).
    """

    def __init__(self, msgid: str, /, **values: object) -> None:
        self.msgid = msgid
        self.values = values
        super().__init__(self.text(texts("en")))

    def text(self, t: Texts) -> str:
        shown = {k: listing(t, v) if isinstance(v, list | tuple) else v for k, v in self.values.items()}
        return t(self.msgid, **shown)


@dataclass(frozen=True, slots=True)
class Subcommand:
    name: str
    usage: str  # msgids: what the admin types stays as is, the <placeholders> are translated
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
            # shlex refuses only an open quote or a backslash at the very end.
            raise Invalid(
                N_("Cannot read the arguments: a quote is left open, or the text ends with a backslash.")
            ) from exc

    def user(self, text: str) -> str:
        """A user named as `<channel>:<id>`, e.g. `telegram:123`."""
        text = text.strip()
        m = USER_RE.match(text)
        if m is None or m.group(2).split(":", 1)[0] in ("private", "group"):
            raise Invalid(N_("'%(text)s' is not a user: write <channel>:<user id>, e.g. telegram:123"), text=text)
        if m.group(1) not in self._channels:
            raise Invalid(
                N_("'%(text)s': there is no channel '%(channel)s'. Channels: %(channels)s."),
                text=text,
                channel=m.group(1),
                channels=sorted(self._channels),
            )
        return text

    def chat(self, text: str) -> ChatRef:
        """A chat named as `<channel>:<kind>:<chat id>`, e.g. `telegram:group:-100123`."""
        try:
            ref = ChatRef.parse(text.strip())
        except ValueError as exc:
            raise Invalid(N_("'%(text)s' is not a chat: write e.g. telegram:group:-100123"), text=text) from exc
        if ref.channel not in self._channels:
            raise Invalid(
                N_("'%(text)s': there is no channel '%(channel)s'. Channels: %(channels)s."),
                text=text,
                channel=ref.channel,
                channels=sorted(self._channels),
            )
        return ref
