"""The ORM mapping of the `generations` table (defined, with its contract, in `tables.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped

from imagen4ctl.db.tables import UTCDateTime, generations, metadata
from imagen4ctl.db.values import (
    COMPLETED,
    FAILED,
    IMAGEN4,
    IN_FLIGHT,
    PENDING,
    PROCESSING,
    STATUSES,
    as_utc,
    utcnow,
)

__all__ = [  # re-exported: the names most callers import from here
    "COMPLETED", "FAILED", "IMAGEN4", "IN_FLIGHT", "PENDING", "PROCESSING", "STATUSES",
    "Base", "Generation", "UTCDateTime", "as_utc", "generations", "metadata",
    "utcnow",
]


class Base(DeclarativeBase):
    metadata = metadata


class Generation(Base):
    __table__ = generations

    id: Mapped[int]
    user_id: Mapped[str]
    kind: Mapped[str]
    status: Mapped[str]
    prompt: Mapped[str]
    aspect_ratio: Mapped[str | None]
    fal_request_id: Mapped[str | None]
    result_urls: Mapped[list[str] | None]
    error: Mapped[str | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    fal_endpoint: Mapped[str | None]
    params: Mapped[dict[str, Any] | None]
    submit_started_at: Mapped[datetime | None]
    submitted_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None]
    claimed_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"Generation(id={self.id}, user_id={self.user_id!r}, status={self.status})"
