"""Outbound Feishu: a Message as ordered parts, media uploaded first, then send or reply.

Text is split at TEXT_MAX bytes; an image is uploaded for an `image_key`; a video goes as
`media` (an mp4 `file_key` with a cover `image_key`); opus audio as `audio`; anything else as
`file`; media over the limits as a link (the shared MediaPreparer does the sizing,
downloading and linking; the upload calls are Feishu's). In a group, or in a thread, every
part replies to the message that asked; a reply in a thread stays in the thread.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from lark_oapi.api.im.v1 import (
    CreateMessageRequest,
    CreateMessageRequestBody,
    ReplyMessageRequest,
    ReplyMessageRequestBody,
)

from hub.channels.base import SendRequest
from hub.channels.feishu.api import FeishuApi
from hub.channels.feishu.parse import ID
from hub.channels.parts import Part, send_parts
from hub.channels.parts import render as render_parts
from hub.channels.uploads import MB, MediaPreparer
from hub.events import ChatRef, Mention, Message
from hub.fetch import Fetcher
from hub.i18n.language import ChatLanguages
from hub.storage.media import MediaStore

TEXT_MAX = 30 * 1024  # bytes of one text: the request limit is 150 KB after JSON escaping
IMAGE_MAX = 10 * MB
FILE_MAX = 30 * MB
LIMITS = {"image": IMAGE_MAX, "voice": FILE_MAX, "video": FILE_MAX, "file": FILE_MAX}
FILE_TYPES = {".pdf": "pdf", ".doc": "doc", ".docx": "doc", ".xls": "xls", ".xlsx": "xls", ".ppt": "ppt"}
FILE_TYPES |= {".pptx": "ppt", ".mp4": "mp4", ".opus": "opus"}
SENT_KEPT = 10_000  # ids of recent messages the bot sent, to recognise replies to it


def render(message: Message) -> list[Part]:
    """The parts of a message in order: text split at TEXT_MAX, one per media, captions after
    (a video's too: Feishu's media message has no title)."""
    return render_parts(message, TEXT_MAX, mention=_mention, titled_video=False)


def _mention(seg: Mention) -> str:
    if seg.user_id and ID.fullmatch(seg.user_id):
        return f'<at user_id="{seg.user_id}">{html.escape(seg.name)}</at> '
    return f"@{seg.name} "


def cover_png() -> bytes:
    """A plain dark 16:9 PNG: the cover of a video that comes without one."""
    width, height = 320, 180
    raw = b"".join(b"\x00" + b"\x20\x20\x28" * width for _ in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class _Uploads:
    """The preparer's Uploader over Feishu's two upload calls."""

    def __init__(self, api: FeishuApi) -> None:
        self._api = api

    async def upload(self, kind: str, data: bytes, filename: str, mime: str) -> str:
        if kind == "image":
            return await self._api.upload_image(data, filename, mime)
        if kind == "voice":
            return await self._api.upload_file("opus", data, filename, mime)
        if kind == "video":
            return await self._api.upload_file("mp4", data, filename, mime)
        file_type = FILE_TYPES.get(os.path.splitext(filename)[1].lower(), "stream")
        return await self._api.upload_file(file_type, data, filename, mime)


def reply_target(target: ChatRef, quote: str | None, context: Mapping[str, Any] | None) -> str | None:
    """The message a part replies to: the asking one, in a group or a thread."""
    if quote is None or not context or (target.kind != "group" and not target.thread_id):
        return None
    message_id = context.get("message_id")
    return message_id if isinstance(message_id, str) and message_id else None


class FeishuSender:
    def __init__(
        self,
        api: FeishuApi,
        media: MediaStore,
        public_url: str | None,
        fetcher: Fetcher,
        languages: ChatLanguages | None = None,
    ) -> None:
        self.api = api
        self._media = MediaPreparer(
            _Uploads(api),
            media,
            public_url,
            limits=LIMITS,
            voice_formats=frozenset({"opus"}),
            fetcher=fetcher,
            languages=languages,
        )
        self._cover: str | None = None
        self._sent: OrderedDict[str, None] = OrderedDict()

    async def send(self, request: SendRequest) -> list[str]:
        target, quote = request.target, request.quote
        reply_to = reply_target(target, quote, request.context)

        async def one(index: int, part: Part) -> str | None:
            msg_type, content = await self._wire(await self._media.prepare(part, request))
            # Feishu's uuid makes a retried send of the same part of a quoted reply a no-op.
            key = f"{target}|{quote}|{index + 1}|{msg_type}|{content}" if quote else None
            return await self.post(target, reply_to, msg_type, content, idempotency=key)

        return await send_parts(render(request.message), request, one)

    async def _wire(self, payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        kind = payload["msgtype"]
        if kind == "image":
            return "image", {"image_key": payload["media_id"]}
        if kind == "voice":
            return "audio", {"file_key": payload["media_id"]}
        if kind == "video":
            return "media", {"file_key": payload["media_id"], "image_key": await self._cover_key()}
        if kind == "file":
            return "file", {"file_key": payload["media_id"]}
        return "text", {"text": str(payload.get("text", ""))}

    async def _cover_key(self) -> str:
        if self._cover is None:
            self._cover = await self.api.upload_image(cover_png(), "cover.png", "image/png")
        return self._cover

    async def post(
        self,
        target: ChatRef,
        reply_to: str | None,
        msg_type: str,
        content: Mapping[str, Any],
        *,
        idempotency: str | None = None,
    ) -> str:
        """Send one message (or reply to `reply_to`); returns its message_id.

        `idempotency` becomes Feishu's `uuid`: a retry of the same part within an hour is
        dropped by the platform instead of shown twice.
        """
        body = json.dumps(content, ensure_ascii=False)
        uuid = hashlib.sha256(idempotency.encode()).hexdigest()[:32] if idempotency else None
        request: Any
        if reply_to is not None:
            rb = ReplyMessageRequestBody.builder().msg_type(msg_type).content(body)
            if target.thread_id:
                rb = rb.reply_in_thread(True)
            if uuid:
                rb = rb.uuid(uuid)
            request = ReplyMessageRequest.builder().message_id(reply_to).request_body(rb.build()).build()
        else:
            receive_type = "open_id" if target.kind == "private" else "chat_id"
            cb = CreateMessageRequestBody.builder().receive_id(target.chat_id).msg_type(msg_type).content(body)
            if uuid:
                cb = cb.uuid(uuid)
            request = CreateMessageRequest.builder().receive_id_type(receive_type).request_body(cb.build()).build()
        data = await self.api.execute(request)
        message_id = data.get("message_id")
        if not isinstance(message_id, str):
            return ""
        self._sent[message_id] = None
        while len(self._sent) > SENT_KEPT:
            self._sent.popitem(last=False)
        return message_id

    def sent_by_bot(self, message_id: str) -> bool:
        """Whether this process sent the message (a reply to it addresses the bot in a group)."""
        return message_id in self._sent
