"""Statistics behind `user-images`: counts the database computes (GROUP BY, never rows loaded
into Python), stuck generations in plain sight, and the most recent images with links."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, and_, func, select

from imagen4ctl.db.tables import COMPLETED, IN_FLIGHT, as_utc, generations, utcnow
from imagen4ctl.durations import format_duration
from imagen4ctl.errors import StorageError

if TYPE_CHECKING:
    from imagen4ctl.adapters.storage import Storage

LINK_EXPIRY = timedelta(hours=1)
TOP_STUCK_USERS = 5


@dataclass(frozen=True)
class StuckGeneration:
    id: int
    user_id: str
    kind: str
    status: str
    fal_request_id: str | None
    age_seconds: int  # since creation
    state_seconds: int  # since the last change

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    stuck: list[StuckGeneration] = field(default_factory=list)
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
            "stuck": [s.to_json() for s in self.stuck],
            "top_stuck_users": [{"user_id": u, "stuck": n} for u, n in self.top_stuck_users],
            "recent": [r.to_json() for r in self.recent],
            "verdict": self.verdict,
        }


def _kind_label(kind: str) -> str:
    return kind[:1].upper() + kind[1:]


def user_report(
    session: Connection,
    user_id: str | None,
    *,
    stuck_after: float,
    kind: str | None = None,
    limit: int = 20,
    recent: int = 5,
    storage: Storage | None = None,
    now: datetime | None = None,
) -> StatsReport:
    """One user's (or, without `user_id`, the fleet's) statistics, as a few aggregate queries.

    `session` is a Core connection (an ORM session works too): no row is loaded as an object.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stuck_after)
    g = generations.c
    scope: list[ColumnElement[bool]] = []
    if user_id is not None:
        scope.append(g.user_id == user_id)
    if kind is not None:
        scope.append(g.kind == kind)
    stuck_scope = [*scope, g.status.in_(IN_FLIGHT), g.updated_at < cutoff]

    by_kind: dict[str, dict[str, int]] = {}
    for row_kind, status, count in session.execute(
        select(g.kind, g.status, func.count()).where(*scope).group_by(g.kind, g.status)
    ):
        by_kind.setdefault(row_kind, {})[status] = int(count)
    total = sum(sum(c.values()) for c in by_kind.values())
    if user_id is not None:
        users = 1 if total else 0
    else:
        distinct = select(g.user_id).where(*scope).distinct().subquery()
        users = int(session.scalar(select(func.count()).select_from(distinct)) or 0)

    stuck_by_kind: dict[str, int] = {}
    oldest_created: datetime | None = None
    for row_kind, count, oldest in session.execute(
        select(g.kind, func.count(), func.min(g.created_at)).where(*stuck_scope)
        .group_by(g.kind)
    ):
        stuck_by_kind[row_kind] = int(count)
        created = as_utc(oldest)
        if created is not None and (oldest_created is None or created < oldest_created):
            oldest_created = created
    stuck_count = sum(stuck_by_kind.values())
    stuck = [
        StuckGeneration(r.id, r.user_id, r.kind, r.status, r.fal_request_id,
                        _seconds(now, r.created_at), _seconds(now, r.updated_at))
        for r in session.execute(
            select(g.id, g.user_id, g.kind, g.status, g.fal_request_id, g.created_at,
                   g.updated_at).where(*stuck_scope).order_by(g.created_at, g.id).limit(limit)
        )
    ] if stuck_count and limit > 0 else []
    top = [
        (uid, int(n)) for uid, n in session.execute(
            select(g.user_id, func.count().label("n")).where(*stuck_scope)
            .group_by(g.user_id).order_by(func.count().desc(), g.user_id)
            .limit(TOP_STUCK_USERS)
        )
    ] if stuck_count else []

    return StatsReport(
        user_id=user_id, total=total, users=users, by_kind=by_kind,
        stuck_after_seconds=int(stuck_after), stuck_count=stuck_count,
        oldest_stuck_seconds=_seconds(now, oldest_created) if oldest_created else None,
        stuck=stuck, stuck_by_kind=stuck_by_kind, top_stuck_users=top,
        recent=recent_images(session, scope, recent, storage) if recent > 0 else [],
    )


def recent_images(
    session: Connection, scope: list[ColumnElement[bool]], count: int, storage: Storage | None
) -> list[RecentImage]:
    g = generations.c
    rows = session.execute(
        select(g.id, g.kind, g.prompt, g.result_urls)
        .where(and_(*scope, g.status == COMPLETED))
        .order_by(g.updated_at.desc(), g.id.desc()).limit(count)
    )
    images = []
    for row in rows:
        keys = [k for k in (row.result_urls or []) if isinstance(k, str)]
        urls = [link_for(k, storage) for k in keys]
        expires = int(LINK_EXPIRY.total_seconds()) if storage is not None and any(
            not _is_http(k) for k in keys) and _expiring(storage) else None
        images.append(RecentImage(row.id, row.kind, row.prompt, keys, urls, expires))
    return images


def link_for(key: str, storage: Storage | None) -> str:
    """A link to an image: fal's own http(s) URLs as they are, else a presigned one."""
    if _is_http(key) or storage is None:
        return key
    try:
        return storage.presigned_url(key, LINK_EXPIRY)
    except StorageError:
        return ""  # statistics stay useful while storage is down; the command warns



def _expiring(storage: Storage) -> bool:
    from imagen4ctl.adapters.storage import LocalStorage

    return not isinstance(storage, LocalStorage)  # file:// links do not expire


def _is_http(value: str) -> bool:
    return value.startswith(("https://", "http://"))


def _seconds(now: datetime, then: datetime | None) -> int:
    then = as_utc(then)
    return max(0, int((now - then).total_seconds())) if then is not None else 0
