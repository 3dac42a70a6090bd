"""The schema, as SQLAlchemy Core tables. Migrations in `migrations/` must match it (a test checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python everywhere; SQLite stores naive UTC and drops tzinfo."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        at: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


PK = BigInteger().with_variant(Integer, "sqlite")
metadata = MetaData()

inbox = Table(
    "inbox",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("channel", String(32), nullable=False),
    Column("event_id", String(191), nullable=False),
    Column("chat", String(255), nullable=False),
    Column("sender", String(255), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("holder", String(64)),
    Column("lease_until", UTCDateTime()),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("handled_at", UTCDateTime()),
    Column("error", Text),
    UniqueConstraint("channel", "event_id", name="uq_inbox_channel_event"),
)
Index("ix_inbox_status_lease", inbox.c.status, inbox.c.lease_until)

outbox = Table(
    "outbox",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("target", String(255), nullable=False),
    Column("message", JSON, nullable=False),
    Column("quote", String(191)),
    Column("context", JSON, nullable=False),
    Column("origin", String(32), nullable=False, server_default="reply"),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("progress", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("holder", String(64)),
    Column("lease_until", UTCDateTime()),
    Column("last_error", Text),
    Column("idempotency_key", String(255), unique=True),
    Column("sent_ids", JSON),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
)
# A claim walks the pending messages in order and stops at its limit (an index on the due time
# instead made it sort every due message, each claim).
Index("ix_outbox_status_id", outbox.c.status, outbox.c.id)
# A claim asks, per candidate, whether its chat has a message in flight: by chat, not a scan.
Index("ix_outbox_target_status", outbox.c.target, outbox.c.status)

chats = Table(
    "chats",
    metadata,
    Column("ref", String(255), primary_key=True),
    Column("persona", String(64)),
    Column("model", String(64)),
    Column("skills_off", JSON, nullable=False),
    Column("unreachable", Boolean, nullable=False, server_default="0"),
    Column("unreachable_reason", Text),
    Column("migrated_to", String(255)),
    # What `/lang` set for the chat (`zh` | `en`); NULL: the default order.
    Column("language", String(8)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("name", String(255), nullable=False, server_default=""),
    Column("banned", Boolean, nullable=False, server_default="0"),
    Column("is_admin", Boolean, nullable=False, server_default="0"),
    Column("allowed", Boolean, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("chat", String(255)),
    Column("action", String(64), nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("outcome", String(32), nullable=False),
)
Index("ix_audit_at", audit.c.at)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(8), primary_key=True),
    Column("origin", String(255), unique=True),
    Column("owner", String(255), nullable=False),
    Column("chat", String(255), nullable=False),
    Column("quote", String(191)),
    Column("context", JSON, nullable=False),
    Column("skill", String(16), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("provider_job_id", String(255)),
    Column("prompt", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_poll_at", UTCDateTime()),
    Column("holder", String(64)),
    Column("lease_until", UTCDateTime()),
    Column("result", JSON),
    Column("error", Text),
    Column("progress_noted", Boolean, nullable=False, server_default="0"),
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("submitted_at", UTCDateTime()),
    Column("deadline_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
)
Index("ix_jobs_state_next", jobs.c.state, jobs.c.next_poll_at)
Index("ix_jobs_owner", jobs.c.owner, jobs.c.created_at)

memory = Table(
    "memory",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("chat", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("name", String(255)),
    Column("content", Text, nullable=False),
    Column("tokens", Integer, nullable=False, server_default="0"),
    # The event a turn answers: re-handling an event after a crash stores its turns once.
    Column("event_id", String(191)),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("chat", "event_id", "role", name="uq_memory_event"),
)
Index("ix_memory_chat", memory.c.chat, memory.c.id)

personas = Table(
    "personas",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("data", JSON, nullable=False),
    Column("source", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

usage = Table(
    "usage",
    metadata,
    Column("user", String(255), primary_key=True),
    Column("skill", String(16), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("count", Integer, nullable=False, server_default="0"),
)

quotas = Table(
    "quotas",
    metadata,
    Column("subject", String(255), primary_key=True),
    Column("skill", String(16), primary_key=True),
    Column("per_day", Integer, nullable=False),
)

pairing = Table(
    "pairing",
    metadata,
    Column("code", String(16), primary_key=True),
    Column("user", String(255), nullable=False),
    Column("chat", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("approved_at", UTCDateTime()),
    Column("approved_by", String(255)),
)

web_events = Table(
    "web_events",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("session", String(128), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
)
Index("ix_web_events_session", web_events.c.session, web_events.c.id)

media = Table(
    "media",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("path", Text, nullable=False),
    Column("name", String(255)),
    Column("mime", String(127)),
    Column("size", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # The kind the skill asked for: only these are served inline (see hub/http.py).
    Column("kind", String(16)),
)
Index("ix_media_created", media.c.created_at)

kv = Table(
    "kv",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Replies waiting for the user's next message, on platforms that can only answer a message
# (WeChat's passive reply mode). `payload` is the channel's own, ready-to-send form.
held_replies = Table(
    "held_replies",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("chat", String(255), nullable=False),
    Column("dedupe_key", String(64), nullable=False, unique=True),
    Column("quote", String(191)),
    Column("payload", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)
Index("ix_held_replies_chat", held_replies.c.chat, held_replies.c.id)

# (timestamp, nonce) of callbacks whose signature does not cover the body (WeChat plain mode),
# with the body's SHA-256: a replayed signature with another body is refused. Kept for the
# timestamp window only; the unique key makes the first insert win across processes.
callback_nonces = Table(
    "callback_nonces",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("channel", String(32), nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("nonce", String(128), nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # timestamp first: pruning by timestamp uses this index too.
    UniqueConstraint("timestamp", "nonce", "channel", name="uq_callback_nonces"),
)


# Replies an inbound message allows, on platforms that only answer (a count and a deadline
# per message id): taking one is a conditional UPDATE, so processes never overspend.
reply_slots = Table(
    "reply_slots",
    metadata,
    Column("msg_id", String(255), primary_key=True),
    Column("chat", String(255), nullable=False),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("closes_at", UTCDateTime(), nullable=False),
    Column("used", Integer, nullable=False, server_default="0"),
)
Index("ix_reply_slots_chat", reply_slots.c.chat, reply_slots.c.opened_at)
