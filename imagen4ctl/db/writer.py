"""Plain SQL writes on the driver's own connections: the generation service's state changes.

A batch's first submission waits for its rows, and importing SQLAlchemy costs as long as
everything else before it. So the generation service's writes (`generations/`) are plain
SQL that SQLite and PostgreSQL both run (`:name` parameters, as for the reports), sent here
through sqlite3 or psycopg2 on a few pooled connections. Values are stored as SQLAlchemy
stores them (naive UTC text on SQLite, JSON as text on SQLite and JSONB on PostgreSQL), so
the ORM paths read these rows unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from imagen4ctl.db.driver import (
    SQLITE_BUSY_TIMEOUT_MS,
    Target,
    bind,
    connect_postgresql,
    database_error,
    driver_error,
)
from imagen4ctl.db.reader import Reader

BUSY_TIMEOUT_MS = SQLITE_BUSY_TIMEOUT_MS  # as the SQLAlchemy path (a name here, for tests)


class Writer(Reader):
    """One transaction on one connection.

    With `reconnect`, the connection came from a pool and has not been used since: if the
    server dropped it meanwhile (a restart, an idle timeout), the first statement fails
    before anything of the transaction reached the database, and runs again, once, on a
    connection from `reconnect`. A pooled connection is so never checked in advance, which
    would cost a round trip before every transaction.
    """

    def __init__(self, connection: Any, backend: str, *,
                 reconnect: Callable[[], Any] | None = None) -> None:
        super().__init__(connection, backend)
        self._reconnect = reconnect

    def _run(self, sql: str, params: dict[str, Any], server_side: bool) -> Any:
        reconnect, self._reconnect = self._reconnect, None
        try:
            return super()._run(sql, params, server_side)
        except Exception:
            # psycopg2's `closed` is nonzero once the link is gone
            if reconnect is None or not self.connection.closed:
                raise
        self.connection.close()
        self.connection = reconnect()
        return super()._run(sql, params, server_side)

    def execute(self, sql: str, **params: Any) -> int:
        """Run one statement; the number of rows it changed."""
        with self._executed(sql, params) as cursor:
            return int(cursor.rowcount)

    def _value(self, value: Any) -> Any:
        if isinstance(value, dict | list):
            if self.backend == "postgresql":
                from psycopg2.extras import Json

                return Json(value)
            return json.dumps(value)
        return bind(value, self.backend)


def in_list(name: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """`(:name0, :name1, …)` and its parameters, for `column IN` a list of values."""
    params = {f"{name}{i}": value for i, value in enumerate(values)}
    return "(" + ", ".join(f":{key}" for key in params) + ")", params


class WriterPool:
    """Connections kept open between transactions (a batch commits three times a generation);
    thread-safe, each connection used by one thread at a time."""

    def __init__(self, db: Target) -> None:
        self.db = db
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        # SQLite lets one writer in at a time; a writer that finds it taken sleeps in growing
        # steps (up to 100 ms) before trying again. This process's own writers queue here
        # instead and go in the moment the previous one commits; other processes still
        # meet the busy timeout.
        self._turn: threading.Lock | None = threading.Lock() if db.is_sqlite else None
        self._error = driver_error(db)

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator[Writer]:
        """Committed when the block ends, rolled back if it raises. `exclusive` takes SQLite's
        writer lock at once (PostgreSQL callers take advisory locks of their own). Not
        re-entrant: a thread finishes one transaction before it opens another."""
        with self._turn or nullcontext():
            with self._transaction(exclusive) as writer:
                yield writer

    @contextmanager
    def _transaction(self, exclusive: bool) -> Iterator[Writer]:
        try:
            connection, pooled = self._take()
        except self._error as e:
            raise database_error(self.db, e) from e
        backend = "sqlite" if self.db.is_sqlite else "postgresql"
        writer = Writer(connection, backend,
                        reconnect=self._connect if pooled and not self.db.is_sqlite else None)
        try:
            if self.db.is_sqlite:
                connection.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")
            try:
                yield writer
            except BaseException:
                if not getattr(writer.connection, "closed", 0):  # gone: nothing to roll back
                    writer.connection.rollback()
                raise
            writer.connection.commit()
        except self._error as e:
            writer.connection.close()  # in an unknown state: never reused
            raise database_error(self.db, e) from e
        except BaseException:
            self._give(writer.connection)  # rolled back: fit for the next transaction
            raise
        self._give(writer.connection)

    def close(self) -> None:
        """Close the idle connections now, and each busy one when its transaction ends."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for connection in idle:
            connection.close()

    def _take(self) -> tuple[Any, bool]:
        """A connection, and whether it comes from the pool (unchecked)."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            return self._connect(), False
        return connection, True

    def _give(self, connection: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return
        connection.close()

    def _connect(self) -> Any:
        db = self.db
        if db.is_sqlite:
            import sqlite3

            path = db.sqlite_path
            connection = sqlite3.connect(str(path) if path is not None else ":memory:",
                                         timeout=db.connect_timeout, isolation_level=None,
                                         check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            return connection
        return connect_postgresql(db)
