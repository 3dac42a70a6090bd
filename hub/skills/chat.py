"""The chat skill: plain text to the chat's model, in the chat's persona, with its memory."""

from __future__ import annotations

from hub.skills.base import Context

NO_MODEL = (
    "No chat model is configured yet: add a [[models]] entry (name, base_url, api_key, model) "
    "to config/hub.toml and restart the hub."
)


class NoModelChat:
    """What plain text gets while no model is configured: how to configure one."""

    async def __call__(self, ctx: Context) -> None:
        await ctx.reply(NO_MODEL)
