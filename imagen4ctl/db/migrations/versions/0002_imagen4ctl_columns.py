"""imagen4ctl's own nullable columns (endpoint, timings, claim) and the indexes its scans need.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("fal_endpoint", sa.String(128)))
        batch.add_column(sa.Column("params", sa.JSON().with_variant(JSONB(), "postgresql")))
        batch.add_column(sa.Column("submit_started_at", _TS))
        batch.add_column(sa.Column("submitted_at", _TS))
        batch.add_column(sa.Column("completed_at", _TS))
        batch.add_column(sa.Column("claimed_by", sa.String(128)))
        batch.add_column(sa.Column("claimed_at", _TS))
    op.create_index("ix_generations_user_kind_status", "generations",
                    ["user_id", "kind", "status"])
    op.create_index("ix_generations_status_updated", "generations", ["status", "updated_at"])
    op.create_index("ix_generations_kind_status_updated", "generations",
                    ["kind", "status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_generations_kind_status_updated", "generations")
    op.drop_index("ix_generations_status_updated", "generations")
    op.drop_index("ix_generations_user_kind_status", "generations")
    with op.batch_alter_table("generations") as batch:
        for column in ("claimed_at", "claimed_by", "completed_at", "submitted_at",
                       "submit_started_at", "params", "fal_endpoint"):
            batch.drop_column(column)
