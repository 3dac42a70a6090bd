"""The message ids the bot sent, per account: a reply to one of them addresses the bot.

Kept in memory, bounded (the newest `per_account` ids of each self_id), filled at start from
the outbox's sent rows and then by every send's answer: a reply to an older message of the
bot, or to one another hub process sent, needs an @mention instead.
"""

from __future__ import annotations

from collections import OrderedDict


class SentIds:
    def __init__(self, per_account: int = 20000) -> None:
        self._max = per_account
        self._ids: dict[str, OrderedDict[str, None]] = {}

    def add(self, self_id: str, message_id: str) -> None:
        ids = self._ids.setdefault(self_id, OrderedDict())
        ids[message_id] = None
        ids.move_to_end(message_id)
        while len(ids) > self._max:
            ids.popitem(last=False)

    def __call__(self, self_id: str, message_id: str) -> bool:
        ids = self._ids.get(self_id)
        return ids is not None and message_id in ids
