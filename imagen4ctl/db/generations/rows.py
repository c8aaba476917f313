"""The one row type of `generations`, whichever path read it, and the values of a new row."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from imagen4ctl.db.values import IN_FLIGHT, PENDING, as_utc

# Every column, in the table's order (a test keeps it equal to `tables.generations`).
COLUMNS = (
    "id", "user_id", "kind", "status", "prompt", "aspect_ratio", "fal_request_id",
    "result_urls", "error", "created_at", "updated_at", "fal_endpoint", "params",
    "submit_started_at", "submitted_at", "completed_at", "claimed_by", "claimed_at",
)
# What recovery, the worker and the webhooks need of an in-flight row: all but its results.
IN_FLIGHT_COLUMNS = tuple(c for c in COLUMNS if c not in ("result_urls", "submitted_at"))
TIMES = frozenset({"created_at", "updated_at", "submit_started_at", "submitted_at",
                   "completed_at", "claimed_at"})


@dataclass(frozen=True, slots=True)
class GenerationRow:
    """A row of `generations` as read. A column the statement did not select keeps its
    default; `read_at` is the clock the read was made against, which ages count from."""

    id: int
    user_id: str = ""
    kind: str = ""
    status: str = ""
    prompt: str = ""
    aspect_ratio: str | None = None
    fal_request_id: str | None = None
    result_urls: Any = None  # a list of keys or URLs, or whatever the bot wrote
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    fal_endpoint: str | None = None
    params: Any = None
    submit_started_at: datetime | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    read_at: datetime | None = field(default=None, compare=False)

    def held_by_live_claim(self, now: datetime, stale_after: timedelta,
                           is_dead: Callable[[str], bool]) -> bool:
        """Claimed, by an owner `is_dead` does not call gone, and not renewed longer than
        `stale_after` before `now` (or never dated): what the claim statements (claims.py)
        will not take from it."""
        if self.claimed_by is None or is_dead(self.claimed_by):
            return False
        return self.claimed_at is None or self.claimed_at >= now - stale_after

    @property
    def age_seconds(self) -> int:
        """Since creation, as of `read_at`."""
        return _seconds(self.read_at, self.created_at)

    @property
    def state_seconds(self) -> int:
        """Since the last change, as of `read_at`."""
        return _seconds(self.read_at, self.updated_at)

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT


def _seconds(now: datetime | None, then: datetime | None) -> int:
    assert now is not None, "a row read without a clock has no age"
    return max(0, int((now - then).total_seconds())) if then is not None else 0


def from_driver(columns: Sequence[str], values: Sequence[Any],
                 read_at: datetime | None = None) -> GenerationRow:
    """SQLite gives times and JSON as text; psycopg2 gives datetimes and decoded JSON."""
    data = dict(zip(columns, values, strict=True))
    for name in TIMES.intersection(data):
        data[name] = as_utc(data[name])
    if "id" in data:
        data["id"] = int(data["id"])
    if isinstance(data.get("params"), str):
        data["params"] = json.loads(data["params"])
    if isinstance(data.get("result_urls"), str):
        try:
            data["result_urls"] = json.loads(data["result_urls"])
        except ValueError:
            data["result_urls"] = [data["result_urls"]]  # a bare URL the bot wrote
    return GenerationRow(**data, read_at=read_at)


def from_orm(columns: Sequence[str], row: Any, read_at: datetime | None = None
              ) -> GenerationRow:
    """From an ORM object or result row: times are aware UTC and JSON decoded already."""
    return GenerationRow(**{name: getattr(row, name) for name in columns}, read_at=read_at)


@dataclass(frozen=True)
class NewGeneration:
    """The values of a row to insert; created and updated `at` now unless given."""

    user_id: str
    kind: str
    prompt: str
    aspect_ratio: str | None
    fal_endpoint: str | None = None
    params: dict[str, Any] | None = None
    status: str = PENDING
    result_urls: list[str] | None = None
    at: datetime | None = None
