"""What the reader, the writer and the ORM session share: parameters, values, error texts."""

from __future__ import annotations

import ast
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

import pytest

from imagen4ctl.db import driver, reader, session, writer
from imagen4ctl.db.driver import bind, database_error, pyformat
from imagen4ctl.db.session import Database


def test_named_parameters_become_pyformat_and_percent_signs_stay_literal() -> None:
    assert pyformat("SELECT 1 WHERE a = :a AND b LIKE 'x%' AND c::text = :c_2") == \
        "SELECT 1 WHERE a = %(a)s AND b LIKE 'x%%' AND c::text = %(c_2)s"


def test_datetimes_bind_as_sqlalchemys_sqlite_text() -> None:
    moment = datetime(2026, 11, 26, 7, 30, 5, 123, tzinfo=timezone(timedelta(hours=2)))
    assert bind(moment, "postgresql") is moment
    assert bind(moment, "sqlite") == "2026-11-26 05:30:05.000123"
    assert bind(moment.replace(tzinfo=None), "sqlite") == "2026-11-26 07:30:05.000123"


def test_driver_errors_become_one_line_with_the_fix() -> None:
    db = Database("sqlite:////nowhere/x.db")
    missing = database_error(db, sqlite3.OperationalError("no such table: generations"))
    assert missing.message == "the generations table is missing in SQLite file /nowhere/x.db"
    assert missing.hint == "Run `imagen4ctl db upgrade`."
    locked = database_error(db, sqlite3.OperationalError("database is locked"))
    assert locked.message == "SQLite file /nowhere/x.db is locked by another writer"
    other = database_error(db, sqlite3.OperationalError("disk I/O error\nmore detail"))
    assert other.message == "SQLite file /nowhere/x.db: disk I/O error"
    assert other.hint == "Check DATABASE_URL, and that the database server is running."


@pytest.mark.parametrize(("module", "allowed"), [
    (driver, {"url"}),
    (reader, {"driver"}),
    (writer, {"driver", "reader"}),
    (session, {"driver", "reader", "writer", "url"}),
])
def test_the_connection_modules_import_each_other_one_way(module: ModuleType,
                                                           allowed: set[str]) -> None:
    """driver ← reader ← writer ← session, never back (type-only imports included)."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {node.module.removeprefix("imagen4ctl.db.") for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
                and node.module.startswith("imagen4ctl.db.")}
    assert imported <= allowed, f"{module.__name__} imports {sorted(imported - allowed)}"
