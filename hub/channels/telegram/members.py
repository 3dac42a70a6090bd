"""Whether a group member is one of its admins: `getChatMember`, reading only `status`.

aiogram's own answer type is a union of six models whose required fields grow with each Bot
API version: a local Bot API server a version behind would fail validation, and a real admin
would be refused. Only `status` matters here, so the answer is read as a loose object.
"""

from __future__ import annotations

import logging

from aiogram import Bot
from aiogram.methods import TelegramMethod
from aiogram.types import TelegramObject

from hub.channels.recent import RecentAnswers
from hub.channels.telegram.render import send_error
from hub.events import Event

log = logging.getLogger("hub.telegram")

ADMIN_STATUSES = frozenset({"creator", "administrator"})
TTL_S = 60.0
KEPT = 4096
# The command waits on this answer: a slow API costs it this much at most.
TIMEOUT_S = 10


class MemberStatus(TelegramObject):
    status: str


class GetMemberStatus(TelegramMethod[MemberStatus]):
    __returning__ = MemberStatus
    __api_method__ = "getChatMember"

    chat_id: int | str
    user_id: int


class GroupAdmins:
    """Answers per (chat, user), kept for a minute: a burst of commands costs one call."""

    def __init__(self, bot: Bot, *, ttl_s: float = TTL_S, size: int = KEPT) -> None:
        self._bot = bot
        self._answers: RecentAnswers[tuple[str, str], bool] = RecentAnswers(ttl_s, size)

    async def is_admin(self, event: Event) -> bool:
        chat, user = event.chat.chat_id, event.sender.id
        if event.chat.kind != "group":
            return False
        if user == chat:
            # An anonymous admin speaks as the group itself, which only its admins can do.
            return True
        try:
            chat_id, user_id = int(chat), int(user)
        except ValueError:
            return False

        async def lookup() -> bool:
            member = await self._bot(GetMemberStatus(chat_id=chat_id, user_id=user_id), request_timeout=TIMEOUT_S)
            return member.status in ADMIN_STATUSES

        try:
            return await self._answers.get((chat, user), lookup)
        except Exception as exc:
            log.warning("event=telegram_get_chat_member_failed chat=%s user=%s error=%s", chat, user, send_error(exc))
            return False

    def close(self) -> None:
        self._answers.close()
