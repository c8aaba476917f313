"""Statistics behind `user-images`: counts the database computes (GROUP BY, never rows loaded
into Python), stuck generations in plain sight, and the most recent images with links.

The statements are plain SQL that SQLite and PostgreSQL both run, sent through a `Reader`
(no SQLAlchemy to import); `bench/stats.py` runs these same statements through psql.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from imagen4ctl.db.values import COMPLETED, IN_FLIGHT, as_utc, sql_list, utcnow
from imagen4ctl.durations import format_duration
from imagen4ctl.errors import StorageError

if TYPE_CHECKING:
    from imagen4ctl.adapters.storage import Storage
    from imagen4ctl.db.reader import Reader

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
    params: dict[str, Any] = {"cutoff": now - timedelta(seconds=stuck_after), "user_id": user_id,
                              "kind": kind, "limit": limit, "top": TOP_STUCK_USERS,
                              "recent": recent}
    sql = Statements(user_id is not None, kind is not None)

    by_kind: dict[str, dict[str, int]] = {}
    for row_kind, status, count in reader.rows(sql.counts, **params):
        by_kind.setdefault(row_kind, {})[status] = int(count)
    total = sum(sum(c.values()) for c in by_kind.values())
    if user_id is not None:
        users = 1 if total else 0
    else:
        users = int(reader.value(sql.users, **params) or 0)

    stuck_by_kind: dict[str, int] = {}
    oldest_created: datetime | None = None
    for row_kind, count, oldest in reader.rows(sql.stuck_by_kind, **params):
        stuck_by_kind[row_kind] = int(count)
        created = as_utc(oldest)
        if created is not None and (oldest_created is None or created < oldest_created):
            oldest_created = created
    stuck_count = sum(stuck_by_kind.values())
    stuck = [
        StuckGeneration(int(id_), uid, row_kind, status, request_id,
                        _seconds(now, created), _seconds(now, updated))
        for id_, uid, row_kind, status, request_id, created, updated
        in reader.rows(sql.stuck, **params)
    ] if stuck_count and limit > 0 else []
    top = [(uid, int(n)) for uid, n in reader.rows(sql.top_stuck_users, **params)] \
        if stuck_count else []

    return StatsReport(
        user_id=user_id, total=total, users=users, by_kind=by_kind,
        stuck_after_seconds=int(stuck_after), stuck_count=stuck_count,
        oldest_stuck_seconds=_seconds(now, oldest_created) if oldest_created else None,
        stuck=stuck, stuck_by_kind=stuck_by_kind, top_stuck_users=top,
        recent=recent_images(reader.rows(sql.recent, **params), storage) if recent > 0 else [],
    )


@dataclass(frozen=True)
class Statements:
    """The report's SQL for a scope (a user, a kind, both or neither), `:name` parameters.

    The in-flight statuses are written out, not bound, so that PostgreSQL matches the
    partial index on them (ix_generations_in_flight).
    """

    by_user: bool
    by_kind: bool

    @property
    def _scope(self) -> list[str]:
        return ([" user_id = :user_id"] if self.by_user else []) + \
            ([" kind = :kind"] if self.by_kind else [])

    def _where(self, *extra: str) -> str:
        terms = [*self._scope, *extra]
        return " WHERE" + " AND".join(terms) if terms else ""

    @property
    def _stuck(self) -> str:
        return self._where(f" status IN {sql_list(IN_FLIGHT)}", " updated_at < :cutoff")

    @property
    def counts(self) -> str:
        return f"SELECT kind, status, count(*) FROM generations{self._where()} " \
            "GROUP BY kind, status"

    @property
    def users(self) -> str:
        return f"SELECT count(*) FROM (SELECT DISTINCT user_id FROM generations{self._where()})" \
            " AS scoped"

    @property
    def stuck_by_kind(self) -> str:
        return f"SELECT kind, count(*), min(created_at) FROM generations{self._stuck} " \
            "GROUP BY kind"

    @property
    def stuck(self) -> str:
        return ("SELECT id, user_id, kind, status, fal_request_id, created_at, updated_at "
                f"FROM generations{self._stuck} ORDER BY created_at, id LIMIT :limit")

    @property
    def top_stuck_users(self) -> str:
        return (f"SELECT user_id, count(*) FROM generations{self._stuck} GROUP BY user_id "
                "ORDER BY count(*) DESC, user_id LIMIT :top")

    @property
    def recent(self) -> str:
        completed = f" status = '{COMPLETED}'"
        return (f"SELECT id, kind, prompt, result_urls FROM generations{self._where(completed)} "
                "ORDER BY updated_at DESC, id DESC LIMIT :recent")


def recent_images(rows: list[tuple[Any, ...]], storage: Storage | None) -> list[RecentImage]:
    """The most recent COMPLETED rows (id, kind, prompt, result_urls), with links."""
    images = []
    for id_, row_kind, prompt, result_urls in rows:
        if isinstance(result_urls, str):  # JSON text on SQLite
            try:
                result_urls = json.loads(result_urls)
            except ValueError:
                result_urls = [result_urls]  # a bare URL the bot wrote
        keys = [k for k in (result_urls or []) if isinstance(k, str)]
        urls = [link_for(k, storage) for k in keys]
        expires = int(LINK_EXPIRY.total_seconds()) if storage is not None and any(
            not _is_http(k) for k in keys) and _expiring(storage) else None
        images.append(RecentImage(int(id_), row_kind, prompt, keys, urls, expires))
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


def _seconds(now: datetime, then: datetime | str | None) -> int:
    then = as_utc(then)
    return max(0, int((now - then).total_seconds())) if then is not None else 0
