"""Statistics behind `user-images`: counts the database computes (GROUP BY, never rows loaded
into Python), stuck generations in plain sight, and the most recent images with links.

The counts come from `db.generations.Report`, read through the driver in one snapshot (no
SQLAlchemy to import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from imagen4ctl.db.generations import GenerationRow, Report
from imagen4ctl.db.values import utcnow
from imagen4ctl.durations import format_duration
from imagen4ctl.errors import StorageError
from imagen4ctl.keys import LINK_EXPIRY, is_remote

if TYPE_CHECKING:
    from imagen4ctl.adapters.storage import Storage
    from imagen4ctl.db.reader import Reader

TOP_STUCK_USERS = 5


@dataclass(frozen=True)
class RecentImage:
    id: int
    kind: str
    prompt: str
    keys: list[str]
    urls: list[str]
    url_expires_seconds: int | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StatsReport:
    user_id: str | None
    total: int
    users: int
    by_kind: dict[str, dict[str, int]]  # kind → status → count
    stuck_after_seconds: int
    stuck_count: int
    oldest_stuck_seconds: int | None
    stuck: list[GenerationRow] = field(default_factory=list)  # with ages as of the report
    stuck_by_kind: dict[str, int] = field(default_factory=dict)
    top_stuck_users: list[tuple[str, int]] = field(default_factory=list)
    recent: list[RecentImage] = field(default_factory=list)

    @property
    def statuses(self) -> list[str]:
        known = ["PENDING", "PROCESSING", "COMPLETED", "FAILED"]
        seen = {s for counts in self.by_kind.values() for s in counts}
        return [s for s in known if s in seen] + sorted(seen - set(known))

    @property
    def verdict(self) -> str:
        if self.total == 0:
            return f"user {self.user_id} has no generations" if self.user_id else \
                "no generations yet"
        if not self.stuck_count:
            return f"nothing stuck: {self.total} generations, none PENDING or PROCESSING " \
                f"longer than {format_duration(self.stuck_after_seconds)}"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.stuck_by_kind.items()))
        label = (f"{_kind_label(next(iter(self.stuck_by_kind)))} "
                 if len(self.stuck_by_kind) == 1 else "")
        detail = f" ({kinds})" if len(self.stuck_by_kind) > 1 else ""
        plural = "s" if self.stuck_count != 1 else ""
        oldest = format_duration(self.oldest_stuck_seconds or 0)
        return (f"{self.stuck_count} stuck {label}generation{plural}{detail}, oldest {oldest} "
                "— run `imagen4ctl fix-pending`")

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "total": self.total,
            "users": self.users,
            "by_kind": {kind: {"total": sum(counts.values()), "by_status": dict(counts)}
                        for kind, counts in sorted(self.by_kind.items())},
            "stuck_after_seconds": self.stuck_after_seconds,
            "stuck_count": self.stuck_count,
            "oldest_stuck_seconds": self.oldest_stuck_seconds,
            "stuck": [_stuck_json(s) for s in self.stuck],
            "top_stuck_users": [{"user_id": u, "stuck": n} for u, n in self.top_stuck_users],
            "recent": [r.to_json() for r in self.recent],
            "verdict": self.verdict,
        }


def _stuck_json(row: GenerationRow) -> dict[str, Any]:
    return {"id": row.id, "user_id": row.user_id, "kind": row.kind, "status": row.status,
            "fal_request_id": row.fal_request_id, "age_seconds": row.age_seconds,
            "state_seconds": row.state_seconds}


def _kind_label(kind: str) -> str:
    return kind[:1].upper() + kind[1:]


def user_report(
    reader: Reader,
    user_id: str | None,
    *,
    stuck_after: float,
    kind: str | None = None,
    limit: int = 20,
    recent: int = 5,
    storage: Storage | None = None,
    now: datetime | None = None,
) -> StatsReport:
    """One user's (or, without `user_id`, the fleet's) statistics, as a few aggregate queries."""
    now = now or utcnow()
    queries = Report(reader, user_id=user_id, kind=kind,
                     cutoff=now - timedelta(seconds=stuck_after), limit=limit,
                     top=TOP_STUCK_USERS, recent=recent)

    by_kind: dict[str, dict[str, int]] = {}
    for row_kind, status, count in queries.counts_by_kind_and_status():
        by_kind.setdefault(row_kind, {})[status] = count
    total = sum(sum(c.values()) for c in by_kind.values())
    if user_id is not None:
        users = 1 if total else 0
    else:
        users = queries.users()

    stuck_by_kind: dict[str, int] = {}
    oldest_created: datetime | None = None
    for row_kind, count, created in queries.stuck_by_kind():
        stuck_by_kind[row_kind] = count
        if created is not None and (oldest_created is None or created < oldest_created):
            oldest_created = created
    stuck_count = sum(stuck_by_kind.values())
    stuck = queries.stuck(read_at=now) if stuck_count and limit > 0 else []
    top = queries.top_stuck_users() if stuck_count else []

    return StatsReport(
        user_id=user_id, total=total, users=users, by_kind=by_kind,
        stuck_after_seconds=int(stuck_after), stuck_count=stuck_count,
        oldest_stuck_seconds=_seconds(now, oldest_created) if oldest_created else None,
        stuck=stuck, stuck_by_kind=stuck_by_kind, top_stuck_users=top,
        recent=recent_images(queries.recent_completed(), storage) if recent > 0 else [],
    )


def recent_images(rows: list[GenerationRow], storage: Storage | None) -> list[RecentImage]:
    """The most recent COMPLETED rows, with links."""
    images = []
    for row in rows:
        keys = [k for k in (row.result_urls or []) if isinstance(k, str)]
        urls = [link_for(k, storage) for k in keys]
        expires = int(LINK_EXPIRY.total_seconds()) if storage is not None and any(
            not is_remote(k) for k in keys) and storage.links_expire else None
        images.append(RecentImage(row.id, row.kind, row.prompt, keys, urls, expires))
    return images


def link_for(key: str, storage: Storage | None) -> str:
    """A link to an image: fal's own http(s) URLs as they are, else a presigned one."""
    if is_remote(key) or storage is None:
        return key
    try:
        return storage.presigned_url(key, LINK_EXPIRY)
    except StorageError:
        return ""  # statistics stay useful while storage is down; the command warns


def _seconds(now: datetime, then: datetime) -> int:
    return max(0, int((now - then).total_seconds()))
