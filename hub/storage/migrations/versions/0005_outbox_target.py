"""outbox (target, status): a claim looks up each candidate's chat for a message in flight

Revision ID: 0005_outbox_target
Revises: 0004_qq
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_outbox_target"
down_revision: str | None = "0004_qq"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outbox_target_status", "outbox", ["target", "status"])


def downgrade() -> None:
    op.drop_index("ix_outbox_target_status", table_name="outbox")
