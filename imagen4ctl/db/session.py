"""Engine and sessions for SQLite (the embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, ProgrammingError

if TYPE_CHECKING:  # the ORM is imported only by the paths that use it
    from sqlalchemy.orm import Session, sessionmaker

from imagen4ctl.errors import ConfigError, DatabaseError, SchemaError
from imagen4ctl.settings import mask_url

DB_HINT = "Check DATABASE_URL, and that the database server is running."
SCHEMA_HINT = "Run `imagen4ctl db upgrade`."


def parse_database_url(url: str) -> URL:
    """The SQLAlchemy URL for DATABASE_URL: postgresql:// means psycopg 3; SQLite or PostgreSQL."""
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError) as e:
        raise ConfigError(f"DATABASE_URL is not a database URL: {mask_url(url)!r}",
                          hint="For example sqlite:///imagen4ctl.db or "
                          "postgresql://user@host:5432/dbname.") from e
    backend = parsed.get_backend_name()
    if backend in {"postgres", "postgresql"}:
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database).expanduser()
            return parsed.set(database=str(path.absolute()))
        return parsed
    raise ConfigError(f"DATABASE_URL uses {backend!r}: imagen4ctl supports sqlite and postgresql",
                      hint="Use sqlite:///FILE or postgresql://user@host/dbname.")


def describe_url(url: URL) -> str:
    """Where the database is, for messages: never the password."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}"
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


class Database:
    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = parse_database_url(url)
        self.connect_timeout = connect_timeout
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite or not self.url.database or self.url.database == ":memory:":
            return None
        return Path(self.url.database)

    def describe(self) -> str:
        return describe_url(self.url)

    @property
    def engine(self) -> Engine:
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
    def connect(self) -> Iterator[Connection]:
        """A Core connection, for read-only reports that need no ORM (and its import)."""
        with translate_errors(self), self.engine.connect() as connection:
            yield connection

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Wait for another writer instead of failing at once. (No WAL: that would change the
    # journal mode of the bot's database file for good.)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


@contextmanager
def translate_errors(db: Database) -> Iterator[None]:
    try:
        yield
    except (OperationalError, ProgrammingError, DBAPIError) as e:
        raise database_error(db, e) from e


def database_error(db: Database, exc: DBAPIError) -> DatabaseError:
    """One line a person understands, from a driver error (whose text may be long)."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    lowered = text.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered) or (
        "undefinedtable" in type(exc.orig).__name__.lower()
    ):
        return SchemaError(f"the generations table is missing in {db.describe()}",
                           hint=SCHEMA_HINT)
    if "no such column" in lowered or ("column" in lowered and "does not exist" in lowered):
        return SchemaError(f"the database schema is behind this imagen4ctl ({first})",
                           hint=SCHEMA_HINT)
    if "database is locked" in lowered:
        return DatabaseError(f"{db.describe()} is locked by another writer",
                             hint="Wait for the other process, or stop it, and retry.")
    if "unable to open database file" in lowered:
        return DatabaseError(f"cannot open {db.describe()}",
                             hint="Check that its folder exists and is writable (DATABASE_URL).")
    if "connection refused" in lowered or "could not connect" in lowered or (
        "timeout" in lowered
    ):
        return DatabaseError(f"cannot connect to {db.describe()}: {_short(first)}",
                             hint=DB_HINT)
    return DatabaseError(f"{db.describe()}: {_short(first)}", hint=DB_HINT)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
