"""Who a Feishu group's own admins are: its owner and managers (`GET /open-apis/im/v1/chats/:chat_id`).

Asked with `user_id_type=open_id`, the way the channel names senders, and kept per chat for a
minute: a burst of commands in one group costs one call. Needs the app's permission to read
chat information; a refused or failed call answers "not an admin" and logs why.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lark_oapi.api.im.v1 import GetChatRequest

from hub.channels.feishu.api import FeishuApi
from hub.channels.feishu.parse import ID
from hub.channels.recent import RecentAnswers
from hub.events import Event

log = logging.getLogger("hub.feishu")

TTL_S = 60.0
KEPT = 1024
# The command waits on this answer (the API itself may wait out a rate limit first).
TIMEOUT_S = 10.0


def chat_admins(data: dict[str, Any]) -> frozenset[str]:
    """The open_ids of a chat's owner and user managers, from `GET .../chats/:chat_id`'s data."""
    found: set[str] = set()
    owner = data.get("owner_id")
    if isinstance(owner, str) and owner and data.get("owner_id_type", "open_id") == "open_id":
        found.add(owner)
    managers = data.get("user_manager_id_list")
    if isinstance(managers, list):
        found.update(m for m in managers if isinstance(m, str) and m)
    return frozenset(found)


class GroupAdmins:
    def __init__(self, api: FeishuApi, *, ttl_s: float = TTL_S, size: int = KEPT) -> None:
        self._api = api
        self._answers: RecentAnswers[str, frozenset[str]] = RecentAnswers(ttl_s, size)

    async def is_admin(self, event: Event) -> bool:
        chat = event.chat.chat_id
        if event.chat.kind != "group" or not ID.fullmatch(chat):
            return False

        async def lookup() -> frozenset[str]:
            request = GetChatRequest.builder().chat_id(chat).user_id_type("open_id").build()
            return chat_admins(await asyncio.wait_for(self._api.execute(request), TIMEOUT_S))

        try:
            admins = await self._answers.get(chat, lookup)
        except Exception as exc:
            log.warning("event=feishu_chat_admins_failed chat=%s error=%s", chat, exc or type(exc).__name__)
            return False
        return event.sender.id in admins

    def close(self) -> None:
        self._answers.close()
