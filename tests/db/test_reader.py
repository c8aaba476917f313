"""The reports' read path: plain SQL through sqlite3 / psycopg2, on both databases."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from imagen4ctl.db.session import Database, parse_database_url
from imagen4ctl.errors import DatabaseError, SchemaError
from tests.factories import ago, bot_row, insert_rows


def test_rows_and_times_compare_as_written(migrated_db: str) -> None:
    insert_rows(migrated_db, [
        bot_row("1", "imagen4", "PENDING", age=timedelta(hours=2), result_urls=["a.png"]),
        bot_row("1", "imagen4", "PENDING", age=timedelta(minutes=1)),
        bot_row("2", "avatar", "COMPLETED", age=timedelta(days=1)),
    ])
    with Database(migrated_db).read() as reader:
        older = reader.rows("SELECT user_id, kind, result_urls FROM generations "
                            "WHERE updated_at < :cutoff ORDER BY id", cutoff=ago(minutes=30))
        assert [row[:2] for row in older] == [("1", "imagen4"), ("2", "avatar")]
        assert reader.value("SELECT count(*) FROM generations WHERE user_id = :u", u="1") == 2
        assert reader.value("SELECT count(*) FROM generations WHERE user_id = :u", u="9") == 0


def test_a_missing_sqlite_file_is_reported_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.db"
    with pytest.raises(SchemaError, match="the generations table is missing in SQLite file"), \
            Database(f"sqlite:///{path}").read():
        pass
    assert not path.exists()


def test_the_sqlite_reader_cannot_write(migrated_db: str) -> None:
    if not migrated_db.startswith("sqlite"):
        pytest.skip("PostgreSQL: see the snapshot test (a read-only transaction)")
    with pytest.raises(DatabaseError, match="readonly|read-only|read only"), \
            Database(migrated_db).read() as reader:
        reader.rows("DELETE FROM generations")


def test_an_empty_database_says_run_db_upgrade(db_url: str) -> None:
    with pytest.raises(SchemaError) as caught, Database(db_url).read() as reader:
        reader.rows("SELECT count(*) FROM generations")
    assert "the generations table is missing" in caught.value.message
    assert caught.value.hint == "Run `imagen4ctl db upgrade`."


def test_postgresql_reads_one_snapshot_read_only(migrated_db: str) -> None:
    """Numbers of one report add up while the bot writes: later commits are not seen."""
    if not migrated_db.startswith("postgresql"):
        pytest.skip("SQLite holds its read lock for the transaction instead")
    insert_rows(migrated_db, [bot_row("1", "imagen4", "COMPLETED")])
    writer = create_engine(parse_database_url(migrated_db))
    with Database(migrated_db).read() as reader:
        assert reader.value("SELECT count(*) FROM generations") == 1
        with writer.begin() as connection:
            connection.execute(text("DELETE FROM generations"))
        assert reader.value("SELECT count(*) FROM generations") == 1
    writer.dispose()
    with pytest.raises(DatabaseError, match="read-only transaction"), \
            Database(migrated_db).read() as reader:
        reader.rows("DELETE FROM generations")
    with Database(migrated_db).read() as reader:
        assert reader.value("SELECT count(*) FROM generations") == 0


@pytest.mark.parametrize("path", ["read", "write"])
def test_a_stopped_server_is_one_line(path: str) -> None:
    """The reports' reader and the generation service's writer alike."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    db = Database(f"postgresql://u:pw-canary-Zq8Xv2Lp9Wm4@127.0.0.1:{port}/x")
    with pytest.raises(DatabaseError) as caught, getattr(db, path)():
        pass
    assert caught.value.message.startswith(f"cannot connect to PostgreSQL at 127.0.0.1:{port}/x")
    assert "\n" not in caught.value.message and "canary" not in caught.value.message


def test_stream_yields_every_row_in_order_a_chunk_at_a_time(migrated_db: str) -> None:
    insert_rows(migrated_db, [bot_row(str(n), "imagen4", "PENDING", age=timedelta(minutes=n))
                              for n in range(7)])
    with Database(migrated_db).read() as reader:
        rows = reader.stream("SELECT user_id FROM generations WHERE kind = :kind ORDER BY id",
                             size=3, kind="imagen4")
        assert next(rows) == ("0",)
        if reader.backend == "postgresql":  # a server-side cursor holds the rest
            assert reader.value("SELECT count(*) FROM pg_cursors") == 1
        assert [row[0] for row in rows] == ["1", "2", "3", "4", "5", "6"]
