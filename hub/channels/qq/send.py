"""Hub messages out to QQ: parts (text, or media through the files API then msg_type 7), each
a passive reply with its msg_id and msg_seq.

Media goes by URL: QQ fetches it. The hub's stored media is linked as
`<public_url>/media/<id>`, so without `[http] public_url` a local file cannot be sent and the
user gets a text saying so. Media QQ cannot fetch (304082/304083) or cannot show (files) goes
as a text with its link.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hub.channels.base import SendRequest
from hub.channels.parts import CANNOT_SEND, NOT_SHOWN, MediaLinks, Part, render, send_parts
from hub.channels.qq.api import MediaFetchFailed, QQApi, ReplyExpired
from hub.channels.qq.passive import PassiveReplies
from hub.errors import AwaitingUser, SendError
from hub.events import ChatRef, Media
from hub.i18n.language import ChatLanguages
from hub.storage.media import MediaStore

log = logging.getLogger("hub.qq")

TEXT_BYTES = 4000
FILE_TYPES = {"image": 1, "video": 2, "voice": 3}
WAITING = "QQ allows no reply now: it waits for the chat's next message"
EXPIRED_TRIES = 3


def base_path(target: ChatRef) -> str:
    """`/v2/users/<openid>` or `/v2/groups/<group_openid>`."""
    return f"/v2/users/{target.chat_id}" if target.kind == "private" else f"/v2/groups/{target.chat_id}"


class QQSender:
    def __init__(
        self,
        api: QQApi,
        media: MediaStore,
        public_url: str | None,
        passive: PassiveReplies,
        languages: ChatLanguages | None = None,
    ) -> None:
        self._api = api
        # Files outside the media store are not published: only what the hub stored is linked.
        self._links = MediaLinks(media, public_url or None, publish_files=False, languages=languages)
        self._passive = passive

    async def send(self, request: SendRequest) -> list[str]:
        """Send the parts after `progress`; raises AwaitingUser when QQ allows no reply now."""
        target = request.target
        base = base_path(target)

        async def send_one(n: int, part: Part) -> str | None:
            body = await self._prepare(base, part, request)
            out = await self._reply(target, request.context, base, body)
            log.debug("event=qq_sent target=%s part=%d kind=%s msg_seq=%d", target, n, part.kind, body["msg_seq"])
            return out["id"] if isinstance(out.get("id"), str) else None

        return await send_parts(render(request.message, TEXT_BYTES), request, send_one)

    async def _reply(
        self, target: ChatRef, context: Mapping[str, Any] | None, base: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Post one part as a reply QQ still allows; AwaitingUser when there is none."""
        for _ in range(EXPIRED_TRIES):
            slot = await self._passive.take(target, context)
            if slot is None:
                break
            body.update(msg_id=slot.msg_id, msg_seq=slot.seq)
            try:
                return await self._api.call(f"{base}/messages", body)
            except ReplyExpired as exc:
                # QQ's clock says the window closed: believe it, and try a newer message.
                log.info("event=qq_reply_expired target=%s error=%r", target, str(exc))
                await self._passive.close(slot.msg_id)
        raise AwaitingUser(WAITING)

    async def _prepare(self, base: str, part: Part, request: SendRequest) -> dict[str, Any]:
        """A part's message body without msg_id/msg_seq: text, or media uploaded by URL."""
        if part.media is None:
            return {"msg_type": 0, "content": part.text}
        seg = part.media
        link = await self.link(seg)
        file_type = FILE_TYPES.get(part.kind)
        if file_type is None or link is None:
            return await self._link_text(part, link, request, CANNOT_SEND)
        try:
            out = await self._api.call(f"{base}/files", {"file_type": file_type, "url": link, "srv_send_msg": False})
        except MediaFetchFailed as exc:
            log.info("event=qq_media_fetch_failed kind=%s error=%r", part.kind, str(exc))
            return await self._link_text(part, link, request, NOT_SHOWN)
        file_info = out.get("file_info")
        if not isinstance(file_info, str) or not file_info:
            raise SendError(f"{base}/files: answer without file_info", retryable=True)
        content = part.description.strip() if part.kind == "video" else ""
        return {"msg_type": 7, "content": content or " ", "media": {"file_info": file_info}}

    async def _link_text(self, part: Part, link: str | None, request: SendRequest, reason: str) -> dict[str, Any]:
        assert part.media is not None
        note = await self._links.note(request, part.media.kind, link, reason=reason)
        head = part.description.strip() if part.kind == "video" else ""
        return {"msg_type": 0, "content": f"{head}\n{note}" if head else note}

    async def link(self, seg: Media) -> str | None:
        """A URL QQ can fetch the media from: its own, or the hub's `/media/<id>`."""
        return await self._links.link(seg)
