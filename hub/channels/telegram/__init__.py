"""Telegram: the Bot API over aiogram, by webhook or long polling."""

from hub.channels.telegram.channel import TelegramChannel, delete_webhook, set_webhook

__all__ = ["TelegramChannel", "delete_webhook", "set_webhook"]
