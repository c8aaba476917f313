"""Read-only SQL on the driver's own connection, for reports that must start fast.

`user-images` is the first command an operator runs: its statements take ~0.1 s at a million
rows, and importing SQLAlchemy would cost about as much again. So reports write plain SQL
that SQLite and PostgreSQL both run, with `:name` parameters, and run it here through
sqlite3 or psycopg2, in one read-only snapshot (the numbers of one report add up even while
the bot writes). Driver errors become the same one-line errors as on the SQLAlchemy path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from imagen4ctl.db.session import database_error, table_missing

if TYPE_CHECKING:
    from imagen4ctl.db.session import Database

_PARAM = re.compile(r"(?<![:\w]):(\w+)")
# How SQLAlchemy stores a DateTime on SQLite (naive UTC text, which compares as text).
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def pyformat(sql: str) -> str:
    """`:name` parameters as psycopg2's `%(name)s` (a literal `%` doubled)."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def bind(value: Any, backend: str) -> Any:
    """A parameter as the driver should see it: SQLite compares datetimes as UTC text."""
    if isinstance(value, datetime) and backend == "sqlite":
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime(SQLITE_DATETIME)
    return value


class Reader:
    """One open read-only connection; rows come back as plain tuples."""

    def __init__(self, connection: Any, backend: str) -> None:
        self.connection = connection
        self.backend = backend
        self._cursors = 0

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self._executed(sql, params) as cursor:
            return [tuple(row) for row in cursor.fetchall()]

    def stream(self, sql: str, *, size: int = 500, **params: Any) -> Iterator[tuple[Any, ...]]:
        """Rows as they come, `size` at a time, never all in memory (a server-side cursor on
        PostgreSQL)."""
        with self._executed(sql, params, server_side=True) as cursor:
            while rows := cursor.fetchmany(size):
                yield from (tuple(row) for row in rows)

    @contextmanager
    def _executed(self, sql: str, params: dict[str, Any], *,
                  server_side: bool = False) -> Iterator[Any]:
        if server_side and self.backend == "postgresql":
            self._cursors += 1
            cursor = self.connection.cursor(name=f"imagen4ctl_{self._cursors}")
        else:  # sqlite3 steps through the result as it is fetched anyway
            cursor = self.connection.cursor()
        try:
            cursor.execute(pyformat(sql) if self.backend == "postgresql" else sql,
                           {name: self._value(value) for name, value in params.items()})
            yield cursor
        finally:
            cursor.close()

    def _value(self, value: Any) -> Any:
        return bind(value, self.backend)

    def value(self, sql: str, **params: Any) -> Any:
        rows = self.rows(sql, **params)
        return rows[0][0] if rows else None


def driver_error(db: Database) -> type[BaseException]:
    """The base class of the errors `db`'s driver raises."""
    if db.is_sqlite:
        import sqlite3

        return sqlite3.Error
    import psycopg2

    return psycopg2.Error


def connect_postgresql(db: Database) -> Any:
    """A psycopg2 connection to `db`, bounded by its connect timeout."""
    import psycopg2

    params: dict[str, Any] = {**db.location.libpq_params(),
                              "connect_timeout": max(1, round(db.connect_timeout))}
    return psycopg2.connect(**params)


@contextmanager
def open_reader(db: Database) -> Iterator[Reader]:
    """A Reader on `db`; database errors come out as imagen4ctl errors, as from `session()`."""
    try:
        with (_sqlite if db.is_sqlite else _postgresql)(db) as reader:
            yield reader
    except driver_error(db) as e:
        raise database_error(db, e) from e


@contextmanager
def _sqlite(db: Database) -> Iterator[Reader]:
    import sqlite3
    from urllib.parse import quote

    path = db.sqlite_path
    if path is not None and not path.exists():  # never create the file just to read it
        raise table_missing(db)
    target = f"file:{quote(str(path))}?mode=ro" if path is not None else ":memory:"
    connection = sqlite3.connect(target, uri=path is not None, timeout=db.connect_timeout,
                                 isolation_level=None)
    try:
        connection.execute("BEGIN")  # one snapshot for every statement of the report
        yield Reader(connection, "sqlite")
    finally:
        connection.close()


@contextmanager
def _postgresql(db: Database) -> Iterator[Reader]:
    connection = connect_postgresql(db)
    try:
        connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
        yield Reader(connection, "postgresql")
    finally:
        connection.close()
