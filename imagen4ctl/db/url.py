"""DATABASE_URL, parsed without importing SQLAlchemy: SQLite (the embedded default) or PostgreSQL.

`Database` builds its SQLAlchemy URL from this, and the read-only reports connect with it
directly (`reader.py`), so both always agree on where the database is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote

from imagen4ctl.errors import ConfigError
from imagen4ctl.settings import mask_url

Backend = Literal["sqlite", "postgresql"]
# scheme[+driver]://[user[:password]@][host|[ipv6]][:port][/database][?query], as SQLAlchemy
# reads it (a password may not hold a raw '@'; percent-encode it).
_URL = re.compile(
    r"(?P<scheme>[\w+]+)://"
    r"(?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?"
    r"(?:\[(?P<ipv6host>[^/?]+)\]|(?P<host>[^/:?]+))?"
    r"(?::(?P<port>[^/?]*))?"
    r"(?:/(?P<database>[^?]*))?"
    r"(?:\?(?P<query>.*))?$",
    re.DOTALL,
)
_BACKENDS: dict[str, Backend] = {"sqlite": "sqlite", "postgresql": "postgresql",
                                  "postgres": "postgresql"}
EXAMPLES = "For example sqlite:///imagen4ctl.db or postgresql://user@host:5432/dbname."


@dataclass(frozen=True)
class DatabaseURL:
    backend: Backend
    database: str | None = None  # SQLite: an absolute path or ":memory:"; PostgreSQL: a name
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = ()

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite or not self.database or self.database == ":memory:":
            return None
        return Path(self.database)

    def describe(self) -> str:
        """Where the database is, for messages: never the password."""
        if self.is_sqlite:
            return f"SQLite file {self.database}"
        return f"PostgreSQL at {self.host or 'localhost'}:{self.port or 5432}/{self.database or ''}"

    def libpq_params(self) -> dict[str, str]:
        """psycopg2.connect keywords (password included): libpq's own names."""
        params = {"host": self.host, "port": str(self.port) if self.port else None,
                  "dbname": self.database, "user": self.username, "password": self.password}
        return {k: v for k, v in params.items() if v} | dict(self.query)


def parse_url(url: str) -> DatabaseURL:
    """DATABASE_URL as imagen4ctl understands it; a one-line ConfigError otherwise."""
    text = url.strip()
    match = _URL.match(text)
    port: int | None = None
    if match is not None and match["port"]:
        try:
            port = int(match["port"])
        except ValueError:
            match = None
    if match is None:
        raise ConfigError(f"DATABASE_URL is not a database URL: {mask_url(url)!r}",
                          hint=EXAMPLES)
    scheme = match["scheme"].split("+", 1)[0]  # without a +driver
    backend = _BACKENDS.get(scheme.lower())
    if backend is None:
        raise ConfigError(f"DATABASE_URL uses {scheme!r}: imagen4ctl supports sqlite and "
                          "postgresql",
                          hint="Use sqlite:///FILE or postgresql://user@host/dbname.")
    database = match["database"] or None  # not unquoted, as SQLAlchemy does
    if backend == "sqlite" and database and database != ":memory:":
        database = str(Path(database).expanduser().absolute())
    username = match["username"]
    password = match["password"]
    return DatabaseURL(
        backend=backend,
        database=database,
        host=match["ipv6host"] or match["host"],
        port=port,
        username=unquote(username) if username is not None else None,
        password=unquote(password) if password is not None else None,
        query=tuple(parse_qsl(match["query"] or "", keep_blank_values=True)),
    )
