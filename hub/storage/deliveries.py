"""What the delivery API reads back from the outbox: one message's status, by id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from hub.storage.db import Database
from hub.storage.models import outbox


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    target: str
    status: str
    attempts: int
    error: str | None
    sent_at: datetime | None


class DeliveryRepo:
    """Reads only messages that came through the API: the bot's own replies are not its business."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, item_id: int) -> Delivery | None:
        q = select(
            outbox.c.id, outbox.c.target, outbox.c.status, outbox.c.attempts, outbox.c.last_error, outbox.c.sent_at
        ).where(outbox.c.id == item_id, outbox.c.origin == "api")
        async with self._db.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        if r is None:
            return None
        return Delivery(r.id, r.target, r.status, r.attempts, r.last_error, r.sent_at)

    async def digest_of(self, item_id: int) -> str | None:
        """The body digest the first request with this message's Idempotency-Key carried."""
        q = select(outbox.c.context).where(outbox.c.id == item_id, outbox.c.origin == "api")
        async with self._db.engine.connect() as conn:
            context = (await conn.execute(q)).scalar()
        return context.get("api_digest") if isinstance(context, dict) else None
