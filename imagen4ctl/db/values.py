"""The `generations` table's statuses and times, without SQLAlchemy (reports use them too)."""

from __future__ import annotations

from datetime import UTC, datetime

PENDING, PROCESSING, COMPLETED, FAILED = "PENDING", "PROCESSING", "COMPLETED", "FAILED"
STATUSES = (PENDING, PROCESSING, COMPLETED, FAILED)
IN_FLIGHT = (PENDING, PROCESSING)
IMAGEN4 = "imagen4"
# Columns a table created by the bot must have before imagen4ctl adopts it.
REQUIRED_COLUMNS = (
    "id", "user_id", "kind", "status", "prompt", "aspect_ratio", "fal_request_id",
    "result_urls", "error", "created_at", "updated_at",
)


def sql_list(values: tuple[str, ...]) -> str:
    """`('A', 'B')` for `column IN` a list of this module's constants (never user input)."""
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# Written out, not bound: PostgreSQL uses the partial index on in-flight rows only for a query
# whose predicate is this same text (ix_generations_in_flight).
IN_FLIGHT_SQL = f"status IN {sql_list(IN_FLIGHT)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | str | None) -> datetime | None:
    """Aware UTC from what a driver returns (SQLite gives naive text)."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite stores text, also the bot's CURRENT_TIMESTAMP
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
