"""Storage and database faults: one clear line, exit ≠ 0, no traceback, a row that says why
(or no row when nothing was paid), nothing half-written in storage. fal's faults are in
tests/adapters/test_fal.py."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.commands.test_generate import KEY, rows
from tests.conftest import CliResult
from tests.factories import sql

Cli = Callable[..., CliResult]


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42"}


def one_clear_error(result: CliResult) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_bucket_missing_writes_no_row(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    line = one_clear_error(cli("generate", "x", env={**env, "MINIO_BUCKET": "no-such-bucket"}))
    assert "no-such-bucket" in line
    assert rows(migrated_db) == []


def test_wrong_secret_writes_no_row(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    result = cli("generate", "x", env={**env, "MINIO_SECRET_KEY": "wrong-secret-123"})
    one_clear_error(result)
    assert "MINIO_SECRET_KEY" in result.stderr
    assert rows(migrated_db) == []


def test_local_folder_not_writable_writes_no_row(cli: Cli, migrated_db: str, fal_emulator: Any,
                                                 isolated_env: Path) -> None:
    (isolated_env / "afile").write_text("x")
    env = {"DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGES_DIR": "afile/images"}
    one_clear_error(cli("generate", "x", "--user-id", "1", env=env))
    assert rows(migrated_db) == []


def test_s3_stopped_mid_upload_is_recoverable(cli: Cli, migrated_db: str, fal_emulator: Any,
                                              s3_server_private: Any) -> None:
    server = s3_server_private
    server.admin_client().make_bucket("mid-upload")
    env = {"DATABASE_URL": migrated_db, "FAL_KEY": KEY, "MINIO_ENDPOINT": server.endpoint,
           "MINIO_ACCESS_KEY": server.access_key, "MINIO_SECRET_KEY": server.secret_key,
           "MINIO_BUCKET": "mid-upload"}
    import threading

    def stop_when_downloading() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if fal_emulator.log.entries("file"):
                server.stop(grace=0)
                return
            time.sleep(0.02)

    stopper = threading.Thread(target=stop_when_downloading)
    stopper.start()
    result = cli("generate", "slow upload [fault:file=slow:2]", "--user-id", "1", env=env)
    stopper.join()
    line = one_clear_error(result)
    assert "storing it failed" in line
    [row] = rows(migrated_db)
    assert row.status == "PROCESSING" and row.fal_request_id
    server.start()
    fixed = cli("fix-pending", "--apply", "--older-than", "0", env=env)
    assert fixed.exit_code == 0, fixed.output
    [row] = rows(migrated_db)
    assert row.status == "COMPLETED"
    assert server.storage("mid-upload").stat(row.result_urls[0]) is not None


def test_postgres_unreachable(cli: Cli, fal_emulator: Any) -> None:
    env = {"DATABASE_URL": "postgresql://bot@127.0.0.1:1/db", "FAL_KEY": KEY, "IMAGES_DIR": "i"}
    for args in (["generate", "x", "--user-id", "1"], ["user-images"], ["fix-pending"]):
        line = one_clear_error(cli(*args, env=env))
        assert "PostgreSQL at 127.0.0.1:1/db" in line


def test_sqlite_locked_by_another_writer(cli: Cli, tmp_path: Path, fal_emulator: Any) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    env = {"DATABASE_URL": url, "FAL_KEY": KEY, "IMAGES_DIR": "i"}
    assert cli("db", "upgrade", env=env).exit_code == 0
    holder = sqlite3.connect(tmp_path / "locked.db")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        line = one_clear_error(cli("generate", "x", "--user-id", "1", env=env))
    finally:
        holder.rollback()
        holder.close()
    assert "locked by another writer" in line


def test_schema_behind(cli: Cli, db_url: str, fal_emulator: Any) -> None:
    from alembic import command

    from imagen4ctl.db.migrate import _config
    from imagen4ctl.db.session import Database

    db = Database(db_url)
    with db.engine.begin() as connection:
        command.upgrade(_config(connection), "0001")
    db.dispose()
    env = {"DATABASE_URL": db_url, "FAL_KEY": KEY, "IMAGES_DIR": "i"}
    result = cli("generate", "x", "--user-id", "1", env=env)
    line = one_clear_error(result)
    assert "is at 0001, imagen4ctl needs 0003" in line
    assert "hint: Run `imagen4ctl db upgrade`." in result.stderr
    assert sql(db_url, "SELECT count(*) FROM generations") == [(0,)]
