"""The `generations` table: a contract shared with the bot, which writes rows too.

The bot's columns are required and named exactly; every column imagen4ctl adds is nullable,
so a row inserted with only the bot's columns stays valid.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PENDING, PROCESSING, COMPLETED, FAILED = "PENDING", "PROCESSING", "COMPLETED", "FAILED"
STATUSES = (PENDING, PROCESSING, COMPLETED, FAILED)
IN_FLIGHT = (PENDING, PROCESSING)
IMAGEN4 = "imagen4"


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


def as_utc(value: datetime | str | None) -> datetime | None:
    """Aware UTC from what a driver returns (SQLite aggregates give naive text)."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite rows written by the bot's CURRENT_TIMESTAMP
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONList = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Generation(Base):
    __tablename__ = "generations"

    # The bot's contract.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[str] = mapped_column(Text)
    aspect_ratio: Mapped[str | None] = mapped_column(String(8))
    fal_request_id: Mapped[str | None] = mapped_column(String(64))
    result_urls: Mapped[list[str] | None] = mapped_column(JSONList)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )

    # imagen4ctl's own columns (all nullable).
    fal_endpoint: Mapped[str | None] = mapped_column(String(128))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONList)
    submit_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_generations_user_kind_status", "user_id", "kind", "status"),
        Index("ix_generations_status_updated", "status", "updated_at"),
        Index("ix_generations_kind_status_updated", "kind", "status", "updated_at"),
        Index("ix_generations_user_status_updated", "user_id", "status", "updated_at"),
        Index("ix_generations_in_flight", "updated_at",
              postgresql_include=["status", "kind", "user_id", "created_at", "id",
                                  "fal_request_id"],
              postgresql_where=text("status IN ('PENDING', 'PROCESSING')"),
              sqlite_where=text("status IN ('PENDING', 'PROCESSING')")),
        Index("ix_generations_kind_status", "kind", "status"),
    )

    def __repr__(self) -> str:
        return f"Generation(id={self.id}, user_id={self.user_id!r}, status={self.status})"


# Columns a table created by the bot must have before imagen4ctl adopts it.
REQUIRED_COLUMNS = (
    "id", "user_id", "kind", "status", "prompt", "aspect_ratio", "fal_request_id",
    "result_urls", "error", "created_at", "updated_at",
)
