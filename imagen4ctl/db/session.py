"""Engine and sessions for SQLite (the embedded default) and PostgreSQL (psycopg2), and the
driver's own connections beside them (`read`, `write`).

SQLAlchemy is imported when an engine is first needed, not with this module: the read-only
reports (`Database.read`) and the generation service's writes (`Database.write`) never load it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagen4ctl.db.driver import SQLITE_BUSY_TIMEOUT_MS, translate_errors
from imagen4ctl.db.reader import Reader, open_reader
from imagen4ctl.db.url import DatabaseURL, parse_url
from imagen4ctl.db.writer import Writer, WriterPool

if TYPE_CHECKING:  # the ORM is imported only by the paths that use it
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL
    from sqlalchemy.orm import Session, sessionmaker

DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg2"}


def parse_database_url(url: str) -> URL:
    """The SQLAlchemy URL for DATABASE_URL (postgresql:// means psycopg2)."""
    return sqlalchemy_url(parse_url(url))


def sqlalchemy_url(location: DatabaseURL) -> URL:
    from sqlalchemy.engine import URL

    query: dict[str, list[str]] = {}
    for key, value in location.query:
        query.setdefault(key, []).append(value)
    return URL.create(
        DRIVERS[location.backend], username=location.username, password=location.password,
        host=location.host, port=location.port, database=location.database,
        query={k: v[0] if len(v) == 1 else tuple(v) for k, v in query.items()},
    )


class Database:
    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.location = parse_url(url)
        self.connect_timeout = connect_timeout
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._writers: WriterPool | None = None
        self._writers_lock = threading.Lock()

    @cached_property
    def url(self) -> URL:
        return sqlalchemy_url(self.location)

    @property
    def is_sqlite(self) -> bool:
        return self.location.is_sqlite

    @property
    def sqlite_path(self) -> Path | None:
        return self.location.sqlite_path

    def describe(self) -> str:
        return self.location.describe()

    @property
    def engine(self) -> Engine:
        from sqlalchemy import create_engine, event

        if self._engine is None:
            args: dict[str, Any] = {}
            if self.is_sqlite:
                args["connect_args"] = {"timeout": self.connect_timeout}
            else:
                args["connect_args"] = {"connect_timeout": max(1, round(self.connect_timeout))}
                args["pool_pre_ping"] = True
            engine = create_engine(self.url, **args)
            if self.is_sqlite:
                event.listen(engine, "connect", _sqlite_pragmas)
            self._engine = engine
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose database errors come out as one-line imagen4ctl errors.

        The caller owns the transaction: nothing is committed here.
        """
        from sqlalchemy.orm import sessionmaker

        if self._sessions is None:
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with translate_errors(self), self._sessions() as session:
            yield session

    @contextmanager
    def bounded_session(self, timeout: float) -> Iterator[Session]:
        """A read session whose statements PostgreSQL cancels after `timeout` seconds.

        (SQLite waits at most its busy timeout for a writer; it has no statement timeout.)
        """
        from sqlalchemy import func, select

        with self.session() as session:
            if not self.is_sqlite:
                session.execute(select(func.set_config(
                    "statement_timeout", str(max(1, int(timeout * 1000))), True)))
            yield session

    def ping(self) -> None:
        """One round trip on the driver's own connection: the database answers."""
        with self.read() as reader:
            reader.value("SELECT 1")

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """Plain SQL on the driver's own connection, in one read-only snapshot: for reports
        that must start fast (SQLAlchemy's import alone costs ~0.1 s)."""
        with open_reader(self) as reader:
            yield reader

    @contextmanager
    def write(self, *, exclusive: bool = False) -> Iterator[Writer]:
        """Plain SQL in one committed transaction on a pooled driver connection: the
        generation service's writes, which must not wait for SQLAlchemy's import."""
        with self._writers_lock:
            if self._writers is None:
                self._writers = WriterPool(self)
            writers = self._writers
        with writers.transaction(exclusive=exclusive) as writer:
            yield writer

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        with self._writers_lock:
            writers, self._writers = self._writers, None
        if writers is not None:
            writers.close()  # a later write() opens a new pool, as the engine does


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Wait for another writer instead of failing at once. (No WAL: that would change the
    # journal mode of the bot's database file for good.)
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
