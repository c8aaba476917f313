"""Indexes measured with bench/stats.py at a million rows: a user's recent images, the
in-flight rows behind every stuck query, and kind × status counts.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

IN_FLIGHT = sa.text("status IN ('PENDING', 'PROCESSING')")


def upgrade() -> None:
    op.create_index("ix_generations_user_status_updated", "generations",
                    ["user_id", "status", "updated_at"])
    op.create_index("ix_generations_in_flight", "generations", ["updated_at"],
                    postgresql_include=["status", "kind", "user_id", "created_at", "id",
                                        "fal_request_id"],
                    postgresql_where=IN_FLIGHT, sqlite_where=IN_FLIGHT)
    op.create_index("ix_generations_kind_status", "generations", ["kind", "status"])


def downgrade() -> None:
    op.drop_index("ix_generations_kind_status", "generations")
    op.drop_index("ix_generations_in_flight", "generations")
    op.drop_index("ix_generations_user_status_updated", "generations")
