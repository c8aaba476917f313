"""What every path to the database shares: connecting the driver, binding values, and turning
driver errors into one-line imagen4ctl errors.

The reader, the writer and the SQLAlchemy session all import this module, and it imports none
of them: `db/session.py` builds on the reader and the writer, never the reverse. SQLAlchemy is
imported only by `translate_errors`, which only the ORM paths use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from imagen4ctl.errors import DatabaseError, SchemaError

if TYPE_CHECKING:
    from imagen4ctl.db.url import DatabaseURL

DB_HINT = "Check DATABASE_URL, and that the database server is running."
SCHEMA_HINT = "Run `imagen4ctl db upgrade`."
SQLITE_BUSY_TIMEOUT_MS = 5000  # how long a SQLite writer waits for another, then says so
# How SQLAlchemy stores a DateTime on SQLite (naive UTC text, which compares as text).
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"
_PARAM = re.compile(r"(?<![:\w]):(\w+)")


class Target(Protocol):
    """Where a connection goes: what the driver paths need of a `Database`."""

    @property
    def location(self) -> DatabaseURL: ...

    @property
    def connect_timeout(self) -> float: ...

    @property
    def is_sqlite(self) -> bool: ...

    @property
    def sqlite_path(self) -> Path | None: ...

    def describe(self) -> str: ...


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


def driver_error(db: Target) -> type[BaseException]:
    """The base class of the errors `db`'s driver raises."""
    if db.is_sqlite:
        import sqlite3

        return sqlite3.Error
    import psycopg2

    return psycopg2.Error


def connect_postgresql(db: Target) -> Any:
    """A psycopg2 connection to `db`, bounded by its connect timeout."""
    import psycopg2

    params: dict[str, Any] = {**db.location.libpq_params(),
                              "connect_timeout": max(1, round(db.connect_timeout))}
    return psycopg2.connect(**params)


@contextmanager
def translate_errors(db: Target) -> Iterator[None]:
    """SQLAlchemy's database errors as `database_error` words them."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as e:
        raise database_error(db, e.orig if e.orig is not None else e) from e


def table_missing(db: Target) -> SchemaError:
    return SchemaError(f"the generations table is missing in {db.describe()}", hint=SCHEMA_HINT)


def database_error(db: Target, exc: BaseException) -> DatabaseError:
    """One line a person understands, from a driver's error (whose text may be long)."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    lowered = text.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered) or (
        "undefinedtable" in type(exc).__name__.lower()
    ):
        return table_missing(db)
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
