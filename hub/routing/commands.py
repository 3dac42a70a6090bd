"""Command parsing: `/name[@bot] args` into a CommandObject, pure (no I/O, no state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CommandObject:
    """A parsed `/command@bot args`: `name` is the canonical command after alias lookup."""

    name: str
    args: str = ""
    mention: str | None = None
    raw_name: str = ""
    # The command named another bot (`/help@OtherBot`): not for us.
    foreign: bool = False


def parse_command(
    text: str, bot_names: Sequence[str] = (), aliases: Mapping[str, str] | None = None
) -> CommandObject | None:
    """Parse `/name[@bot] args`; None when the text is not a command.

    `aliases` maps an alias (without the slash) to a command name. A `@bot` suffix naming none
    of `bot_names` marks the command `foreign` (it is for another bot in the group).
    """
    text = text.strip()
    if not text or text[0] not in "/／":
        return None
    head, _, args = text[1:].partition(" ")
    if "\n" in head:
        head, _, more = head.partition("\n")
        args = f"{more} {args}".strip() if args else more
    raw, _, mention = head.partition("@")
    if not raw:
        return None
    name = raw.lower()
    aliases = aliases or {}
    lowered = {k.lstrip("/").lower(): v.lstrip("/").lower() for k, v in aliases.items()}
    name = lowered.get(name, name)
    foreign = bool(mention) and bool(bot_names) and mention.lower() not in {b.lower().lstrip("@") for b in bot_names}
    return CommandObject(name=name, args=args.strip(), mention=mention or None, raw_name=raw, foreign=foreign)
