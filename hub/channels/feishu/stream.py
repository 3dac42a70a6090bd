"""A chat reply that types itself out: a CardKit streaming card.

1. create a card entity (schema 2.0, `streaming_mode` on, one markdown element); 2. send it
as an `interactive` message (a reply in groups and threads); 3. PUT the growing full text
with a strictly increasing `sequence`, at most UPDATES_PER_S a second; 4. PATCH the settings
with `streaming_mode: false` at the end, so the chat list stops showing "generating".
When creating the card fails, the caller sends the reply whole.
"""

from __future__ import annotations

import contextlib
import json
import logging

from lark_oapi.api.cardkit.v1 import (
    ContentCardElementRequest,
    ContentCardElementRequestBody,
    CreateCardRequest,
    CreateCardRequestBody,
    SettingsCardRequest,
    SettingsCardRequestBody,
)

from hub.channels.base import EditPace, SendResult, split_text
from hub.channels.feishu.api import FeishuApi
from hub.channels.feishu.render import FeishuSender
from hub.errors import SendError
from hub.events import ChatRef

log = logging.getLogger("hub.feishu")

ELEMENT_ID = "answer"
UPDATES_PER_S = 5  # the platform allows 10 per card
CARD_TEXT_MAX = 20_000  # characters shown in the card; the rest follows as text messages


def card_json() -> str:
    card = {
        "schema": "2.0",
        "config": {
            "streaming_mode": True,
            "streaming_config": {
                "print_frequency_ms": {"default": 50},
                "print_step": {"default": 2},
                "print_strategy": "fast",
            },
        },
        "body": {"elements": [{"tag": "markdown", "content": "", "element_id": ELEMENT_ID}]},
    }
    return json.dumps(card, ensure_ascii=False)


async def create_card(api: FeishuApi) -> str:
    """Create the card entity; its card_id, or SendError."""
    request = (
        CreateCardRequest.builder()
        .request_body(CreateCardRequestBody.builder().type("card_json").data(card_json()).build())
        .build()
    )
    data = await api.execute(request)
    card_id = data.get("card_id")
    if not isinstance(card_id, str) or not card_id:
        raise SendError("/open-apis/cardkit/v1/cards: answer without card_id", retryable=False)
    return card_id


class FeishuCardStream:
    """The LiveStream of one card: `update` pushes the text so far, `finish` closes the card."""

    def __init__(self, sender: FeishuSender, target: ChatRef, reply_to: str | None, card_id: str) -> None:
        self._api = sender.api
        self._sender = sender
        self._target = target
        self._reply_to = reply_to
        self.card_id = card_id
        self._pace = EditPace(1.0 / UPDATES_PER_S)
        self._sequence = 0
        self._message_id: str | None = None
        self._closed = False

    async def send_card(self) -> None:
        if self._message_id is None:
            content = {"type": "card", "data": {"card_id": self.card_id}}
            self._message_id = await self._sender.post(self._target, self._reply_to, "interactive", content)

    async def update(self, text: str) -> None:
        shown = self._pace.take(text, lambda t: t[:CARD_TEXT_MAX])
        if shown is None:
            return
        try:
            await self._push(shown)
        except SendError as exc:
            # One refused update is not worth the whole reply: the next one, or finish, catches up.
            log.info("event=feishu_card_update_failed card=%s error=%s", self.card_id, exc)
            self._pace.hold(max(self._pace.interval, exc.retry_after or 0.0))

    async def _push(self, text: str) -> None:
        self._sequence += 1
        body = ContentCardElementRequestBody.builder().content(text).sequence(self._sequence).build()
        request = (
            ContentCardElementRequest.builder().card_id(self.card_id).element_id(ELEMENT_ID).request_body(body).build()
        )
        self._pace.hold(self._pace.interval)  # paced from the call's start: a refused one counts too
        await self._api.execute(request)
        self._pace.shown = text

    async def finish(self, text: str) -> SendResult:
        head, rest = _split_for_card(text.strip())
        try:
            if head != self._pace.shown:
                await self._pace.wait()
                await self._push(head)
        finally:
            # Even when the last text was refused (the reply then goes whole), stop "generating".
            with contextlib.suppress(SendError):
                await self.close()
        ids = [self._message_id or ""]
        for chunk in rest:
            ids.append(await self._sender.post(self._target, self._reply_to, "text", {"text": chunk}))
        return SendResult(tuple(i for i in ids if i))

    async def close(self) -> None:
        """Turn streaming mode off (once): the chat list stops showing the card as generating."""
        if self._closed:
            return
        self._closed = True
        self._sequence += 1
        settings = json.dumps({"config": {"streaming_mode": False}})
        body = SettingsCardRequestBody.builder().settings(settings).sequence(self._sequence).build()
        await self._api.execute(SettingsCardRequest.builder().card_id(self.card_id).request_body(body).build())


def _split_for_card(text: str) -> tuple[str, list[str]]:
    if len(text) <= CARD_TEXT_MAX:
        return text, []
    parts = split_text(text, CARD_TEXT_MAX)
    return parts[0], parts[1:]
