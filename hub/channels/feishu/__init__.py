"""The Feishu / Lark channel (imported only when `[feishu] enabled`: lark-oapi is heavy)."""

from hub.channels.feishu.channel import FeishuChannel

__all__ = ["FeishuChannel"]
