"""Read-only SQL on the driver's own connection, for reports that must start fast.

`user-images` is the first command an operator runs: its statements take ~0.1 s at a million
rows, and importing SQLAlchemy would cost about as much again. So the reports' statements
(`generations/plain.py`) are plain SQL that SQLite and PostgreSQL both run, with `:name`
parameters, run here through sqlite3 or psycopg2 in one read-only snapshot (the numbers of
one report add up even while the bot writes). Driver errors become the same one-line errors
as on the SQLAlchemy path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from imagen4ctl.db.driver import (
    Target,
    bind,
    connect_postgresql,
    database_error,
    driver_error,
    pyformat,
    table_missing,
)


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
        cursor = self._run(sql, params, server_side)
        try:
            yield cursor
        finally:
            cursor.close()

    def _run(self, sql: str, params: dict[str, Any], server_side: bool) -> Any:
        """A cursor that has executed `sql` (closed again if that failed)."""
        if server_side and self.backend == "postgresql":
            self._cursors += 1
            cursor = self.connection.cursor(name=f"imagen4ctl_{self._cursors}")
        else:  # sqlite3 steps through the result as it is fetched anyway
            cursor = self.connection.cursor()
        try:
            cursor.execute(pyformat(sql) if self.backend == "postgresql" else sql,
                           {name: self._value(value) for name, value in params.items()})
        except BaseException:
            cursor.close()
            raise
        return cursor

    def _value(self, value: Any) -> Any:
        return bind(value, self.backend)

    def value(self, sql: str, **params: Any) -> Any:
        rows = self.rows(sql, **params)
        return rows[0][0] if rows else None


@contextmanager
def open_reader(db: Target) -> Iterator[Reader]:
    """A Reader on `db`; database errors come out as imagen4ctl errors, as from `session()`."""
    try:
        with (_sqlite if db.is_sqlite else _postgresql)(db) as reader:
            yield reader
    except driver_error(db) as e:
        raise database_error(db, e) from e


@contextmanager
def _sqlite(db: Target) -> Iterator[Reader]:
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
def _postgresql(db: Target) -> Iterator[Reader]:
    connection = connect_postgresql(db)
    try:
        connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
        yield Reader(connection, "postgresql")
    finally:
        connection.close()
