"""reply slots: what an inbound message still allows on answer-only platforms

Revision ID: 0004_qq
Revises: 0003_h_web
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import hub.storage.models

revision: str = "0004_qq"
down_revision: str | None = "0003_h_web"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reply_slots",
        sa.Column("msg_id", sa.String(length=255), nullable=False),
        sa.Column("chat", sa.String(length=255), nullable=False),
        sa.Column("opened_at", hub.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closes_at", hub.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("msg_id"),
    )
    with op.batch_alter_table("reply_slots", schema=None) as batch_op:
        batch_op.create_index("ix_reply_slots_chat", ["chat", "opened_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reply_slots", schema=None) as batch_op:
        batch_op.drop_index("ix_reply_slots_chat")
    op.drop_table("reply_slots")
