"""OneBot v11: see channel.py; the other modules are its parts (forms, events, actions, sockets)."""

from hub.channels.onebot.channel import OneBotChannel

__all__ = ["OneBotChannel"]
