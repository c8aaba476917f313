"""The statements that run as plain SQL on the driver's own connections (`Database.read`,
`Database.write`): the reports that must start before SQLAlchemy could even be imported
(`user-images`, a fix-pending dry run), and the generation service's state changes, each
committed on its own because each must survive a crash. The SQL runs on SQLite and
PostgreSQL alike, with `:name` parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from imagen4ctl.db.generations.rows import (
    IN_FLIGHT_COLUMNS,
    GenerationRow,
    NewGeneration,
    from_driver,
)
from imagen4ctl.db.values import (
    COMPLETED,
    FAILED,
    IN_FLIGHT,
    IN_FLIGHT_SQL,
    PENDING,
    PROCESSING,
    as_utc,
    sql_list,
    utcnow,
)
from imagen4ctl.db.writer import in_list

if TYPE_CHECKING:
    from imagen4ctl.db.reader import Reader
    from imagen4ctl.db.session import Database
    from imagen4ctl.db.writer import Writer

# The columns a state change may set (they are named in the SQL, never taken from input).
UPDATABLE = frozenset({
    "status", "fal_request_id", "result_urls", "error", "updated_at", "submit_started_at",
    "submitted_at", "completed_at", "params",
})
FINISHED = (COMPLETED, FAILED)
# A (user, prompt, ratio) with such a row is not generated again by seeding: done or on its way.
_TAKEN = f"status IN {sql_list((COMPLETED, *IN_FLIGHT))}"


def _insert_sql(with_result: bool) -> str:
    extra, value = (", result_urls", ", :result_urls") if with_result else ("", "")
    return ("INSERT INTO generations (user_id, kind, status, prompt, aspect_ratio, "
            f"fal_endpoint, params{extra}, created_at, updated_at) VALUES (:user_id, :kind, "
            f":status, :prompt, :aspect_ratio, :fal_endpoint, :params{value}, :now, :now) "
            "RETURNING id")


_INSERT = _insert_sql(False)
_INSERT_WITH_RESULT = _insert_sql(True)


def _insert(writer: Writer, row: NewGeneration) -> int:
    values: dict[str, Any] = {"result_urls": row.result_urls} if row.result_urls is not None \
        else {}
    return int(writer.value(
        _INSERT_WITH_RESULT if values else _INSERT,
        user_id=row.user_id, kind=row.kind, status=row.status, prompt=row.prompt,
        aspect_ratio=row.aspect_ratio, fal_endpoint=row.fal_endpoint, params=row.params,
        **values, now=row.at or utcnow()))


def insert(db: Database, row: NewGeneration) -> int:
    """One row, committed; its id."""
    return insert_many(db, [row])[0]


def insert_many(db: Database, rows: Iterable[NewGeneration]) -> list[int]:
    """Rows in order, with one commit: on SQLite each commit costs several fsyncs, and a batch
    of 100 waited ~2 s for its rows one by one."""
    with db.write() as writer:
        return [_insert(writer, row) for row in rows]


def insert_new(db: Database, rows: Sequence[NewGeneration]) -> list[int | None]:
    """Insert the rows whose (user, kind, prompt, ratio) has no COMPLETED or in-flight row yet
    (None for the others), in one transaction that concurrent runs serialize on: SQLite's one
    writer lock, a PostgreSQL advisory lock per user."""
    ids: list[int | None] = []
    users = sorted({row.user_id for row in rows})
    in_users, user_params = in_list("user", users)
    with db.write(exclusive=True) as writer:
        if not db.is_sqlite:
            for user in users:
                writer.execute("SELECT pg_advisory_xact_lock(:key)", key=lock_key(user))
        existing = set(writer.rows(
            "SELECT user_id, kind, prompt, aspect_ratio FROM generations "
            f"WHERE user_id IN {in_users} AND {_TAKEN}", **user_params))  # noqa: S608
        for row in rows:
            identity = (row.user_id, row.kind, row.prompt, row.aspect_ratio)
            if identity in existing:
                ids.append(None)
                continue
            existing.add(identity)
            ids.append(_insert(writer, row))
    return ids


def lock_key(user_id: str) -> int:
    """A stable 63-bit advisory-lock key for seeding one user's gallery."""
    import hashlib

    digest = hashlib.sha256(f"imagen4ctl-seed:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def change_state(db: Database, generation_id: int, expected: Sequence[str],
                 **values: Any) -> bool:
    """One committed, conditional state change; False when the row moved on meanwhile."""
    values.setdefault("updated_at", utcnow())
    unknown = values.keys() - UPDATABLE
    assert not unknown, f"not a column imagen4ctl updates: {sorted(unknown)}"
    if values.get("status") in FINISHED:  # a finished row is held by nobody, at once
        values.update(claimed_by=None, claimed_at=None)
    states, state_params = in_list("state", expected)
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    with db.write() as writer:
        return writer.execute(
            f"UPDATE generations SET {assignments} "  # noqa: S608 (names from UPDATABLE)
            f"WHERE id = :generation_id AND status IN {states}",
            generation_id=generation_id, **state_params, **values) > 0


def record_submission(db: Database, generation_id: int, request_id: str) -> None:
    """PENDING → PROCESSING with fal's request id. If another run changed the status
    meanwhile, the paid request's id is still kept (where the row has none)."""
    now = utcnow()
    if not change_state(db, generation_id, [PENDING], status=PROCESSING,
                        fal_request_id=request_id, submitted_at=now, error=None):
        with db.write() as writer:
            writer.execute("UPDATE generations SET fal_request_id = :request_id, "
                           "submitted_at = :now WHERE id = :generation_id "
                           "AND fal_request_id IS NULL",
                           request_id=request_id, now=now, generation_id=generation_id)


def in_flight_with_request(db: Database, request_id: str) -> GenerationRow | None:
    """The PENDING/PROCESSING row that holds fal's `request_id`, if any: whom a webhook
    delivery is for. Only in-flight rows are looked at (the partial index of 0003 covers
    them); a finished row has nothing left to learn from fal."""
    sql = (f"SELECT {', '.join(IN_FLIGHT_COLUMNS)} FROM generations "  # noqa: S608
           f"WHERE {IN_FLIGHT_SQL} AND fal_request_id = :request_id "
           "ORDER BY id LIMIT 1")
    with db.write() as writer:
        found = writer.rows(sql, request_id=request_id)
    return from_driver(IN_FLIGHT_COLUMNS, found[0]) if found else None


def taken_pairs(db: Database, user_id: str, kind: str) -> set[tuple[str, str | None]]:
    """(prompt, aspect ratio) pairs this user has COMPLETED or in flight."""
    with db.read() as reader:
        return {(prompt, ratio) for prompt, ratio in reader.rows(
            "SELECT DISTINCT prompt, aspect_ratio FROM generations WHERE user_id = :user "
            f"AND kind = :kind AND {_TAKEN}", user=user_id, kind=kind)}  # noqa: S608


def stream_stuck(db: Database, *, kind: str, cutoff: datetime, user_id: str | None = None,
                 limit: int | None = None, handed_over: bool = False) -> Iterator[GenerationRow]:
    """PENDING/PROCESSING rows unchanged since `cutoff`, oldest first, streamed (never all in
    memory) through the driver: SQLAlchemy's import and its objects cost more than 10,000
    rows. With `handed_over`, also the rows a generation left to fix-pending, whatever their
    age: PROCESSING, with a request id and the error that stopped it."""
    unchanged = "updated_at < :cutoff"
    if handed_over:
        unchanged = (f"({unchanged} OR (status = '{PROCESSING}' AND fal_request_id IS NOT NULL "
                     "AND error IS NOT NULL))")
    where = ["kind = :kind", IN_FLIGHT_SQL, unchanged]
    params: dict[str, Any] = {"kind": kind, "cutoff": cutoff}
    if user_id is not None:
        where.append("user_id = :user_id")
        params["user_id"] = user_id
    sql = (f"SELECT {', '.join(IN_FLIGHT_COLUMNS)} FROM generations "  # noqa: S608
           f"WHERE {' AND '.join(where)} ORDER BY created_at, id")
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    with db.read() as reader:
        for values in reader.stream(sql, **params):
            yield from_driver(IN_FLIGHT_COLUMNS, values)


@dataclass(frozen=True)
class Statements:
    """The `user-images` report's SQL for a scope (a user, a kind, both or neither), `:name`
    parameters; `bench/stats.py` runs these same statements through psql.

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
        return self._where(f" {IN_FLIGHT_SQL}", " updated_at < :cutoff")

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


class Report:
    """The statements of one report, all in `reader`'s one snapshot (its numbers add up even
    while the bot writes). Aggregates are computed by the database, never rows in Python."""

    def __init__(self, reader: Reader, *, user_id: str | None, kind: str | None,
                 cutoff: datetime, limit: int, top: int, recent: int) -> None:
        self.reader = reader
        self.sql = Statements(user_id is not None, kind is not None)
        self._params: dict[str, Any] = {"cutoff": cutoff, "user_id": user_id, "kind": kind,
                                        "limit": limit, "top": top, "recent": recent}

    def counts_by_kind_and_status(self) -> list[tuple[str, str, int]]:
        return [(kind, status, int(count)) for kind, status, count
                in self.reader.rows(self.sql.counts, **self._params)]

    def users(self) -> int:
        """Distinct users in the scope."""
        return int(self.reader.value(self.sql.users, **self._params) or 0)

    def stuck_by_kind(self) -> list[tuple[str, int, datetime | None]]:
        """(kind, stuck rows, when the oldest of them was created)."""
        return [(kind, int(count), as_utc(oldest)) for kind, count, oldest
                in self.reader.rows(self.sql.stuck_by_kind, **self._params)]

    def stuck(self, *, read_at: datetime) -> list[GenerationRow]:
        """The oldest stuck rows, at most `limit`."""
        columns = ("id", "user_id", "kind", "status", "fal_request_id", "created_at",
                   "updated_at")
        return [from_driver(columns, values, read_at)
                for values in self.reader.rows(self.sql.stuck, **self._params)]

    def top_stuck_users(self) -> list[tuple[str, int]]:
        return [(user, int(count))
                for user, count in self.reader.rows(self.sql.top_stuck_users, **self._params)]

    def recent_completed(self) -> list[GenerationRow]:
        """The most recently changed COMPLETED rows, at most `recent`."""
        columns = ("id", "kind", "prompt", "result_urls")
        return [from_driver(columns, values)
                for values in self.reader.rows(self.sql.recent, **self._params)]
