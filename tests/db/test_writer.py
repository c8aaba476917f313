"""The generation service's write path: plain SQL through sqlite3 / psycopg2, on both databases.

Rows it writes must read back through the ORM exactly as if SQLAlchemy had written them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db import generations
from imagen4ctl.db import writer as writer_module
from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import Database
from imagen4ctl.errors import DatabaseError
from imagen4ctl.services.generation import GenerationService, GenerationSpec


def service_on(db: Database, tmp_path: Path) -> GenerationService:
    return GenerationService(db, LocalStorage(tmp_path / "images"), None,
                             model="fal-ai/imagen4/preview/ultra", prefix="g/",
                             max_image_bytes=1024)


def test_rows_written_read_back_through_the_orm_unchanged(migrated_db: str,
                                                          tmp_path: Path) -> None:
    db = Database(migrated_db)
    service = service_on(db, tmp_path)
    spec = GenerationSpec("u1", "a harbour at dawn, 50% fog", aspect_ratio="16:9", seed=7,
                          resolution="2K")
    before = datetime.now(UTC)
    [first, second] = service.create_many([spec, GenerationSpec("u1", "a lighthouse")])
    done = datetime(2026, 11, 26, 7, 30, 5, 123456, tzinfo=UTC)
    assert generations.change_state(db, first, ["PENDING"], status="COMPLETED",
                                    completed_at=done, fal_request_id="r-1",
                                    result_urls=["g/u1/1-0.png", "g/u1/1-1.png"])
    assert not generations.change_state(db, first, ["PENDING"], status="FAILED")  # moved on
    with db.session() as session:
        row = session.get(Generation, first)
        assert row is not None
        assert (row.user_id, row.kind, row.status, row.prompt, row.aspect_ratio) == \
            ("u1", "imagen4", "COMPLETED", "a harbour at dawn, 50% fog", "16:9")
        assert row.params == {"num_images": 1, "seed": 7, "resolution": "2K"}
        assert row.result_urls == ["g/u1/1-0.png", "g/u1/1-1.png"]
        assert row.completed_at == done
        assert row.fal_endpoint == "fal-ai/imagen4/preview/ultra"  # the service's model
        assert row.fal_request_id == "r-1"
        assert before - timedelta(seconds=1) <= row.created_at <= datetime.now(UTC)
        assert row.updated_at >= row.created_at
        other = session.get(Generation, second)
        assert other is not None and other.status == "PENDING" and other.result_urls is None
    db.dispose()


def test_a_failed_block_writes_nothing(migrated_db: str, tmp_path: Path) -> None:
    db = Database(migrated_db)
    with pytest.raises(RuntimeError), db.write() as writer:
        writer.execute("INSERT INTO generations (user_id, kind, status, prompt, created_at, "
                       "updated_at) VALUES ('u', 'imagen4', 'PENDING', 'p', :t, :t)",
                       t=datetime.now(UTC))
        raise RuntimeError("stop")
    with db.read() as reader:
        assert reader.value("SELECT count(*) FROM generations") == 0
    with db.write() as writer:  # the pool still works after the rollback
        assert writer.value("SELECT count(*) FROM generations") == 0
    db.dispose()


def test_a_pooled_connection_the_server_dropped_is_replaced(migrated_db: str) -> None:
    if migrated_db.startswith("sqlite"):
        pytest.skip("PostgreSQL only: a SQLite file has no server to drop a connection")
    db = Database(migrated_db)
    with db.write() as writer:
        pid = writer.value("SELECT pg_backend_pid()")
    with db.write() as writer:
        assert writer.value("SELECT pg_backend_pid()") == pid  # kept open, reused
    _terminate(db, pid)
    with db.write() as writer:
        assert writer.value("SELECT pg_backend_pid()") != pid
        assert writer.value("SELECT count(*) FROM generations") == 0
    db.dispose()


class _Recording:
    """A driver connection that notes every statement sent through its cursors."""

    def __init__(self, connection: Any, sent: list[str]) -> None:
        self._connection, self._sent = connection, sent

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        cursor, sent = self._connection.cursor(*args, **kwargs), self._sent

        class Cursor:
            def execute(self, sql: str, *rest: Any) -> Any:
                sent.append(sql)
                return cursor.execute(sql, *rest)

            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                cursor.close()

        return Cursor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def test_a_pooled_connection_is_reused_without_a_check_first(
        migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    connect = writer_module.WriterPool._connect
    monkeypatch.setattr(writer_module.WriterPool, "_connect",
                        lambda pool: _Recording(connect(pool), sent))
    db = Database(migrated_db)
    for _ in range(3):
        with db.write() as writer:
            assert writer.value("SELECT count(*) FROM generations") == 0
    assert sent == ["SELECT count(*) FROM generations"] * 3
    db.dispose()


def _terminate(db: Database, pid: int) -> None:
    """End backend `pid` from another connection, and wait until it is gone."""
    import psycopg2

    killer = psycopg2.connect(**{**db.location.libpq_params(), "dbname": "postgres"})
    killer.autocommit = True
    try:
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(100):
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cursor.fetchone() == (0,):
                    return
                time.sleep(0.02)
    finally:
        killer.close()
    raise AssertionError(f"backend {pid} did not end")


def test_a_connection_dropped_inside_a_transaction_writes_nothing(migrated_db: str) -> None:
    if migrated_db.startswith("sqlite"):
        pytest.skip("PostgreSQL only: a SQLite file has no server to drop a connection")
    db = Database(migrated_db)
    with db.write() as writer:  # the pool now holds a connection: the next one is reused
        writer.value("SELECT 1")
    insert = ("INSERT INTO generations (user_id, kind, status, prompt, created_at, updated_at) "
              "VALUES ('u', 'imagen4', 'PENDING', 'p', :t, :t)")
    with pytest.raises(DatabaseError), db.write() as writer:
        writer.execute(insert, t=datetime.now(UTC))
        _terminate(db, writer.value("SELECT pg_backend_pid()"))
        # Only a transaction's first statement runs again on a new connection: after it,
        # what the dropped one did is lost, and the transaction fails as a whole.
        writer.value("SELECT count(*) FROM generations")
    with db.write() as writer:
        assert writer.value("SELECT count(*) FROM generations") == 0
    db.dispose()


def test_a_dropped_connection_and_a_database_that_is_gone_say_so(migrated_db: str) -> None:
    if migrated_db.startswith("sqlite"):
        pytest.skip("PostgreSQL only: a SQLite file has no server to drop a connection")
    import psycopg2

    db = Database(migrated_db)
    with db.write() as writer:
        pid = writer.value("SELECT pg_backend_pid()")
    name = db.location.libpq_params()["dbname"]
    admin = psycopg2.connect(**{**db.location.libpq_params(), "dbname": "postgres"})
    admin.autocommit = True
    with admin.cursor() as cursor:  # the server refuses every new connection to it
        cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        _terminate(db, pid)
        with pytest.raises(DatabaseError) as caught, db.write() as writer:
            writer.value("SELECT 1")
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
    assert "not currently accepting connections" in str(caught.value)
    assert "already closed" not in str(caught.value)
    db.dispose()


def test_a_locked_sqlite_file_is_one_line_and_the_next_write_works(
        migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not migrated_db.startswith("sqlite"):
        pytest.skip("SQLite only: PostgreSQL writers wait on row locks instead")
    monkeypatch.setattr(writer_module, "BUSY_TIMEOUT_MS", 50)
    db = Database(migrated_db)
    assert db.sqlite_path is not None
    holder = sqlite3.connect(db.sqlite_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseError) as caught, db.write(exclusive=True):
            pass
        assert caught.value.message == f"{db.describe()} is locked by another writer"
        assert "\n" not in caught.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with db.write(exclusive=True) as writer:
        assert writer.value("SELECT count(*) FROM generations") == 0
    db.dispose()


def test_only_known_columns_can_be_set(migrated_db: str, tmp_path: Path) -> None:
    service = service_on(Database(migrated_db), tmp_path)
    [generation_id] = service.create_many([GenerationSpec("u1", "a lighthouse")])
    with pytest.raises(AssertionError, match="user_id"):
        generations.change_state(service.database, generation_id, ["PENDING"],
                                 user_id="someone else")
    service.database.dispose()


def test_this_processs_sqlite_writers_take_turns_instead_of_meeting_the_busy_timeout(
        migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixteen threads writing at once, with no busy timeout at all: none is refused."""
    if not migrated_db.startswith("sqlite"):
        pytest.skip("SQLite only: one writer at a time is SQLite's rule")
    monkeypatch.setattr(writer_module, "BUSY_TIMEOUT_MS", 0)
    db = Database(migrated_db)
    service = service_on(db, tmp_path)
    ids = service.create_many([GenerationSpec("u1", f"prompt {n}") for n in range(16)])
    failures: list[BaseException] = []

    def churn(generation_id: int) -> None:
        try:
            for n in range(10):
                generations.change_state(db, generation_id, ["PENDING"], error=f"attempt {n}")
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            failures.append(e)

    threads = [threading.Thread(target=churn, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    with db.read() as reader:
        assert reader.value("SELECT count(*) FROM generations WHERE error = 'attempt 9'") == 16
    db.dispose()


def test_dispose_closes_the_pooled_connections_and_later_writes_still_work(
        migrated_db: str) -> None:
    db = Database(migrated_db)
    with db.write() as writer:
        connection = writer.connection
        assert writer.value("SELECT count(*) FROM generations") == 0
    db.dispose()
    if migrated_db.startswith("sqlite"):
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("SELECT 1")
    else:
        assert connection.closed
    with db.write() as writer:
        assert writer.connection is not connection
        assert writer.value("SELECT count(*) FROM generations") == 0
    db.dispose()
