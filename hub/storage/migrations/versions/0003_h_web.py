"""media.kind: the kind of media the skill asked for, so /media serves only that inline

Revision ID: 0003_h_web
Revises: 0002_h_wechat
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_h_web"
down_revision: str | None = "0002_h_wechat"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("media", sa.Column("kind", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("media") as batch:
        batch.drop_column("kind")
