"""The fal fault matrix and storage/database faults: one clear line, exit ≠ 0, no traceback,
a row that says why (or no row when nothing was paid), nothing half-written in storage."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.commands.test_fix_pending import sql
from tests.commands.test_generate import KEY, rows
from tests.conftest import CliResult

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


@pytest.mark.parametrize(
    ("directive", "status", "reason", "row_error"),
    [
        ("submit=404", "FAILED", "fal has no such endpoint", "no such endpoint"),
        ("submit=422", "FAILED", "fal refused the arguments", "refused the arguments"),
        ("submit=500", "FAILED", "fal answered the submit with 500", "500"),
        ("submit=503", "FAILED", "fal answered the submit with 503", "503"),
        ("submit=429", "FAILED", "in time", "in time"),
        ("submit=malformed", "PENDING", "submission state unknown", "submission state unknown"),
        ("submit=drop", "PENDING", "submission state unknown", "submission state unknown"),
        ("status=504", "PROCESSING", "lost contact with fal", None),
        ("status=drop", "PROCESSING", "lost contact with fal", None),
        ("result=malformed", "FAILED", "malformed answer to the result", "malformed"),
        ("run=error:request_timeout", "FAILED", "failed at fal", "fal: Request timed out"),
        ("run=noimages", "FAILED", "fal returned no images", "no images"),
        ("file=404", "FAILED", "the image URL answered 404", "answered 404"),
        ("file=drop", "FAILED", "cannot download the image", "cannot download"),
        ("file=notimage", "FAILED", "not a PNG, JPEG or WebP image", "not a PNG"),
        ("file=large:60MB", "FAILED", "IMAGEN4_MAX_IMAGE_BYTES", "cap"),
    ],
)
def test_fal_fault_matrix(cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any,
                          directive: str, status: str, reason: str,
                          row_error: str | None) -> None:
    result = cli("generate", f"fault {directive} [fault:{directive}]", "--timeout", "4",
                 env=env)
    assert reason in one_clear_error(result)
    [row] = rows(migrated_db)
    assert row.status == status
    if row_error is not None:
        assert row.error is not None and row_error in row.error
    else:  # left for fix-pending, with its request id
        assert row.fal_request_id
    assert list(s3_bucket.storage.list("generations/")) == []


@pytest.mark.parametrize(("knob", "code"), [("accepted_keys", "401"), ("forbidden_keys", "403")])
def test_key_refused(cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any,
                     knob: str, code: str) -> None:
    setattr(fal_emulator, knob, {"not-this-one"} if knob == "accepted_keys" else {KEY})
    line = one_clear_error(cli("generate", "refused", env=env))
    assert f"fal rejected the key from FAL_KEY ({code}" in line
    assert rows(migrated_db)[0].status == "FAILED"


def test_fal_unreachable_fails_fast(cli: Cli, env: dict[str, str], migrated_db: str,
                                    fal_emulator: Any) -> None:
    fal_emulator.faults = "submit=ingress503"  # what a dead upstream behind a proxy looks like
    started = time.monotonic()
    line = one_clear_error(cli("generate", "gone", "--timeout", "3", env=env))
    assert time.monotonic() - started < 15
    assert "in time" in line or "503" in line
    assert rows(migrated_db)[0].status == "FAILED"


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
