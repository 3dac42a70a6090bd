"""How a skill's replies to one event leave: through a live sink when the request that asked is
still open (the web chat), else as the channel's live stream or through the outbox.
"""

from __future__ import annotations

import logging

from hub.channels.base import Channel, LiveSink, LiveStream
from hub.delivery import Outbox
from hub.errors import HubError
from hub.events import Event, Message
from hub.routing.context import ReplyStream
from hub.storage.outbox import NewMessage

log = logging.getLogger("hub.inbound")


class StorageRefused(HubError):
    """A reply of an event that will be handled again is not queued."""


class EventReplier:
    """Replies to one event: through its live sink when one is open, else the outbox.

    Every reply carries an idempotency key derived from the event, so handling the same event
    again after a crash queues nothing twice.
    """

    def __init__(self, event: Event, outbox: Outbox, channel: Channel | None, live: LiveSink | None) -> None:
        self.event = event
        self._outbox = outbox
        self._channel = channel
        self._live = live
        self._n = 0
        # Set when a reply could not be stored: the event is then handled again, not done.
        self.lost_reply = False

    async def store_reply(self, new: NewMessage, *, sent: bool = False) -> None:
        if self.lost_reply:
            # An earlier reply is lost and the event will be handled again: queue nothing now
            # (an apology for the failure would go out beside the real answer).
            raise StorageRefused("an earlier reply of this event was not stored")
        try:
            await (self._outbox.record_sent(new) if sent else self._outbox.put(new))
        except Exception:
            self.lost_reply = True
            raise

    def new_message(self, message: Message, *, quote: bool = True) -> NewMessage:
        self._n += 1
        return NewMessage(
            target=self.event.chat,
            message=message,
            quote=self.event.id if quote else None,
            context=self.event.context,
            idempotency_key=f"{self.event.channel}:{self.event.id}:{self._n}",
        )

    async def reply(self, message: Message, *, quote: bool = True) -> None:
        new = self.new_message(message, quote=quote)
        if self._live is not None and self._live.open:
            try:
                await self._live.message(message)
            except (ConnectionError, RuntimeError):
                pass  # the page went away: deliver through the outbox instead
            else:
                await self.store_reply(new, sent=True)
                return
        await self.store_reply(new)

    def stream(self) -> ReplyStream:
        return _Stream(self, self._outbox, self._channel, self._live)

    async def action(self, kind: str = "typing") -> None:
        if self._channel is None or (self._live is not None and self._live.open):
            return
        try:
            await self._channel.action(self.event.chat, kind)
        except Exception as exc:  # a cosmetic hint: never worth failing a reply for
            log.debug("event=action_failed chat=%s error=%r", self.event.chat, exc)


class _Stream:
    def __init__(self, replier: EventReplier, outbox: Outbox, channel: Channel | None, live: LiveSink | None) -> None:
        self._replier = replier
        self._outbox = outbox
        self._channel = channel
        self._live = live
        self._parts: list[str] = []
        self._live_broken = False
        self._edit: LiveStream | None = None
        self._edit_failed = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    async def push(self, delta: str) -> None:
        if not delta:
            return
        self._parts.append(delta)
        if self._live is not None:
            if self._live.open and not self._live_broken:
                try:
                    await self._live.text(delta)
                except (ConnectionError, RuntimeError):
                    self._live_broken = True
            else:
                self._live_broken = True
            return
        if self._channel is None or not self._channel.limits.can_edit or self._edit_failed:
            return
        try:
            if self._edit is None:
                ev = self._replier.event
                self._edit = await self._channel.open_stream(ev.chat, quote=ev.id, context=ev.context)
                if self._edit is None:
                    self._edit_failed = True
                    return
            await self._edit.update(self.text)
        except Exception as exc:
            log.info("event=stream_edit_failed chat=%s error=%r", self._replier.event.chat, exc)
            self._edit_failed = True

    async def finish(self) -> None:
        text = self.text
        if not text.strip():
            return
        new = self._replier.new_message(Message.of(text))
        if self._live is not None and not self._live_broken and self._live.open:
            await self._replier.store_reply(new, sent=True)
            return
        if self._edit is not None and not self._edit_failed:
            try:
                await self._edit.finish(text)
            except Exception as exc:
                log.info("event=stream_finish_failed chat=%s error=%r", self._replier.event.chat, exc)
            else:
                await self._replier.store_reply(new, sent=True)
                return
        # Not streamed, or cut off half-way: the whole reply goes through the outbox.
        await self._replier.store_reply(new)
