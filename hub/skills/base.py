"""What a skill registers as: its name, handler and help (the Context is in routing/context.py).

Skills never import a channel: everything they send goes through `ctx.reply` / `ctx.stream`,
which the dispatcher backs with the outbox (or a live stream, where one is open).
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.routing.context import Skill


@dataclass(frozen=True, slots=True)
class SkillInfo:
    """What `/help` shows and who may use a command."""

    name: str
    handler: Skill
    # msgids: translated into the chat's language by /help
    description: str
    usage: str = ""
    admin_only: bool = False
    # The switchable skill behind the command, for `/admin skill` and quotas.
    skill: str | None = None
    aliases: tuple[str, ...] = ()
    # The config section the command needs when it is not set up on this hub (None: it is).
    needs: str | None = None
