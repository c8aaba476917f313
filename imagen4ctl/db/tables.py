"""The `generations` table: a contract shared with the bot, which writes rows too.

The bot's columns are required and named exactly; every column imagen4ctl adds is nullable,
so a row inserted with only the bot's columns stays valid. Defined with SQLAlchemy Core, so
that read-only paths (statistics) never import the ORM; `models.py` maps it for the rest.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

from imagen4ctl.db.values import IN_FLIGHT_SQL, as_utc, utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite (which stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return as_utc(value)


JSONList = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

metadata = MetaData()
_IN_FLIGHT_SQL = text(IN_FLIGHT_SQL)

generations = Table(
    "generations",
    metadata,
    # The bot's contract.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("aspect_ratio", String(8)),
    Column("fal_request_id", String(64)),
    Column("result_urls", JSONList),
    Column("error", Text),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow,
           server_default=func.current_timestamp()),
    Column("updated_at", UTCDateTime, nullable=False, default=utcnow,
           server_default=func.current_timestamp()),
    # imagen4ctl's own columns (all nullable).
    Column("fal_endpoint", String(128)),
    Column("params", JSONList),
    Column("submit_started_at", UTCDateTime),
    Column("submitted_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("claimed_by", String(128)),
    Column("claimed_at", UTCDateTime),
    Index("ix_generations_user_kind_status", "user_id", "kind", "status"),
    Index("ix_generations_status_updated", "status", "updated_at"),
    Index("ix_generations_kind_status_updated", "kind", "status", "updated_at"),
    Index("ix_generations_user_status_updated", "user_id", "status", "updated_at"),
    Index("ix_generations_in_flight", "updated_at",
          postgresql_include=["status", "kind", "user_id", "created_at", "id", "fal_request_id"],
          postgresql_where=_IN_FLIGHT_SQL, sqlite_where=_IN_FLIGHT_SQL),
    Index("ix_generations_kind_status", "kind", "status"),
)
