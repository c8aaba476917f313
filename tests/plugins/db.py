"""Database fixtures: every DB test runs on SQLite and on a real PostgreSQL.

PostgreSQL: one fresh database per test run (dropped after) on 127.0.0.1:5432, and one
schema per test inside it, so tests stay isolated and fast.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "IMAGEN4CTL_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run; its URL (postgresql://, no driver)."""
    name = f"imagen4ctl_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001  - the message says how to fix the machine
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not usable ({type(e).__name__}): "
                    "start it with `pg_ctlcluster --skip-systemctl-redirect "
                    "$(ls /etc/postgresql) main start`", pytrace=False)
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql", database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _pg_schema_url(database_url: str, schema: str) -> str:
    return f"{database_url}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema in the run's PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'imagen4ctl-test.db'}"
        return
    database_url: str = request.getfixturevalue("pg_database")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://", 1),
                           isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _pg_schema_url(database_url, schema)
    finally:
        with engine.connect() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def migrated_db(db_url: str) -> str:
    """`db_url` after `imagen4ctl db upgrade`."""
    from imagen4ctl.db.migrate import upgrade
    from imagen4ctl.db.session import Database

    db = Database(db_url)
    upgrade(db)
    db.dispose()
    return db_url
