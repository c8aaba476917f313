"""`imagen4ctl health`: Nagios exit codes and verdicts against real databases, S3 and fal."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from imagen4ctl.db.session import parse_database_url
from tests.conftest import CANARY, CliResult, assert_no_secret
from tests.factories import bot_row, incident_rows, insert_rows

Cli = Callable[..., CliResult]

FAL = {"FAL_KEY": "emulator-test-key"}
INCIDENT_VERDICT = ("CRITICAL: 5 stuck generations (max 0), oldest 33h 4m — run "
                    "`imagen4ctl fix-pending`")
NAGIOS = re.compile(r"IMAGEN4CTL (OK|WARNING|CRITICAL|UNKNOWN) - ([^|\n]+) \| ([^|\n]+)")


def health_json(cli: Cli, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("health", "--format", "json", *args, env=env)
    data = result.json()
    assert isinstance(data, dict)
    assert set(data) == {"status", "exit_code", "checks", "stuck", "success_ratio", "samples"}
    assert data["exit_code"] == result.exit_code
    for check in data["checks"]:
        assert set(check) == {"name", "status", "message", "hint"}
    return result.exit_code, data


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in data["checks"]}


def nagios(result: CliResult) -> tuple[str, str, dict[str, list[str]]]:
    """Status, summary and performance data ({label: [value, warn, crit]}) of one line."""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    match = NAGIOS.fullmatch(lines[0])
    assert match is not None, lines[0]
    perf = {}
    for item in match.group(3).split():
        label, _, values = item.partition("=")
        perf[label] = values.split(";")
    return match.group(1), match.group(2), perf


def mark_completed(db_url: str) -> None:
    engine = create_engine(parse_database_url(db_url))
    with engine.begin() as connection:
        connection.execute(text("UPDATE generations SET status = 'COMPLETED' "
                                "WHERE status = 'PENDING'"))
    engine.dispose()


@pytest.fixture
def incident_env(migrated_db: str, fal_emulator: Any) -> dict[str, str]:
    insert_rows(migrated_db, incident_rows("42"))
    return {"DATABASE_URL": migrated_db, **FAL}


def test_incident_is_critical_then_ok(cli: Cli, incident_env: dict[str, str]) -> None:
    result = cli("health", env=incident_env)
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == INCIDENT_VERDICT
    assert [line.split()[1].rstrip(":") for line in lines[1:]] == [
        "database", "schema", "storage", "fal_api", "stuck", "success_ratio"]
    assert lines[5].startswith("CRITICAL stuck: 5 stuck generations (max 0), oldest 33h 4m")

    code, data = health_json(cli, incident_env)
    assert (code, data["status"], data["stuck"]) == (2, "CRITICAL", 5)
    checks = by_name(data)
    assert {n: c["status"] for n, c in checks.items()} == {
        "database": "OK", "schema": "OK", "storage": "OK", "fal_api": "OK",
        "stuck": "CRITICAL", "success_ratio": "OK"}
    assert checks["stuck"]["hint"] == "run `imagen4ctl fix-pending`"
    # Only the 30-minute-old stuck row was created in the last hour: a sample of one.
    assert (data["samples"], data["success_ratio"]) == (1, 0.0)
    assert "not judged" in checks["success_ratio"]["message"]

    result = cli("health", "--format", "nagios", env=incident_env)
    assert result.exit_code == 2
    status, summary, perf = nagios(result)
    assert status == "CRITICAL"
    assert summary == INCIDENT_VERDICT.removeprefix("CRITICAL: ")
    assert perf == {"stuck": ["5", "", "0"], "success_ratio": ["0.0", "0.9:"],
                    "samples": ["1"]}

    assert cli("health", "--max-stuck", "5", env=incident_env).exit_code == 0
    mark_completed(incident_env["DATABASE_URL"])
    result = cli("health", env=incident_env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK: no stuck generations (max 0)")
    code, data = health_json(cli, incident_env)
    assert (code, data["status"], data["stuck"], data["samples"]) == (0, "OK", 0, 1)
    assert data["success_ratio"] == 1.0
    assert all(c["hint"] is None for c in data["checks"])
    status, _, perf = nagios(cli("health", "--format", "nagios", env=incident_env))
    assert status == "OK" and perf["stuck"] == ["0", "", "0"]


@pytest.fixture
def failing_hour(migrated_db: str, fal_emulator: Any) -> dict[str, str]:
    """8 FAILED and 4 COMPLETED generations in the last hour, older ones all fine."""
    rows = [bot_row("1", "imagen4", "FAILED", age=timedelta(minutes=20), error="fal: 500")
            for _ in range(8)]
    rows += [bot_row("1", "imagen4", "COMPLETED", age=timedelta(minutes=20)) for _ in range(4)]
    rows += [bot_row("1", "imagen4", "COMPLETED", age=timedelta(hours=5)) for _ in range(50)]
    rows += [bot_row("1", "imagen4", "PENDING", age=timedelta(minutes=2))]  # young: no sample
    insert_rows(migrated_db, rows)
    return {"DATABASE_URL": migrated_db, **FAL}


def test_low_success_ratio_is_a_warning(cli: Cli, failing_hour: dict[str, str]) -> None:
    code, data = health_json(cli, failing_hour, "--min-samples", "10")
    assert (code, data["status"], data["stuck"], data["samples"]) == (1, "WARNING", 0, 12)
    assert data["success_ratio"] == pytest.approx(4 / 12, abs=1e-4)
    ratio = by_name(data)["success_ratio"]
    assert ratio["status"] == "WARNING"
    assert ratio["message"] == ("success ratio 33.3% over the last 1h (min 90%; 4 completed, "
                                "8 failed, 0 stuck)")
    result = cli("health", env=failing_hour)
    assert result.exit_code == 1
    assert result.stdout.startswith("WARNING: success ratio 33.3% over the last 1h")
    status, _, perf = nagios(cli("health", "--format", "nagios", env=failing_hour))
    assert status == "WARNING"
    assert perf["success_ratio"] == ["0.3333", "0.9:"] and perf["samples"] == ["12"]
    # The thresholds move the verdict.
    assert cli("health", "--min-success", "0.3", env=failing_hour).exit_code == 0
    code, data = health_json(cli, failing_hour, "--window", "6h")
    assert (code, data["samples"]) == (1, 62)
    assert data["success_ratio"] == pytest.approx(54 / 62, abs=1e-4)
    assert cli("health", "--window", "6h", "--min-success", "0.85", env=failing_hour
               ).exit_code == 0


def test_too_few_samples_is_not_judged(cli: Cli, failing_hour: dict[str, str]) -> None:
    code, data = health_json(cli, failing_hour, "--min-samples", "13")
    assert (code, data["status"], data["samples"]) == (0, "OK", 12)
    assert "fewer than 13 generations, not judged" in by_name(data)["success_ratio"]["message"]
    code, data = health_json(cli, failing_hour, "--window", "5m")
    assert (code, data["samples"], data["success_ratio"]) == (0, 0, None)
    assert by_name(data)["success_ratio"]["message"] == \
        "no finished generations in the last 5m"


def test_stuck_rows_in_the_window_count_as_failures(
    cli: Cli, migrated_db: str, fal_emulator: Any
) -> None:
    rows = [bot_row("1", "imagen4", "COMPLETED", age=timedelta(minutes=40)) for _ in range(9)]
    rows += [bot_row("1", "imagen4", "PROCESSING", age=timedelta(minutes=30),
                     fal_request_id=f"req-{n}") for n in range(2)]
    insert_rows(migrated_db, rows)
    env = {"DATABASE_URL": migrated_db, **FAL}
    code, data = health_json(cli, env, "--max-stuck", "2")
    assert (code, data["stuck"], data["samples"]) == (1, 2, 11)
    assert data["success_ratio"] == pytest.approx(9 / 11, abs=1e-4)
    assert by_name(data)["success_ratio"]["hint"] == "run `imagen4ctl fix-pending`"
    code, data = health_json(cli, {**env, "STUCK_AFTER": "1h"}, "--max-stuck", "2")
    assert (code, data["stuck"], data["samples"]) == (0, 0, 9)  # not stuck yet: no sample


def test_database_unreachable_is_critical(cli: Cli, fal_emulator: Any) -> None:
    env = {"DATABASE_URL": "postgresql://x@127.0.0.1:1/db", **FAL}
    started = time.monotonic()
    code, data = health_json(cli, env, "--timeout", "2")
    assert time.monotonic() - started < 15
    assert (code, data["status"], data["stuck"], data["success_ratio"]) == (2, "CRITICAL",
                                                                             None, None)
    checks = by_name(data)
    assert checks["database"]["status"] == "CRITICAL"
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/db" in checks["database"]["message"]
    assert checks["database"]["hint"] == "see `imagen4ctl check-config`"
    assert checks["stuck"]["status"] == "UNKNOWN"
    status, summary, perf = nagios(cli("health", "--format", "nagios", env=env))
    assert status == "CRITICAL" and "see `imagen4ctl check-config`" in summary
    assert perf["stuck"] == ["U", "", "0"] and perf["success_ratio"] == ["U", "0.9:"]


def test_schema_missing_names_db_upgrade(cli: Cli, db_url: str, fal_emulator: Any) -> None:
    sqlite_file = Path(db_url.removeprefix("sqlite:///")) if db_url.startswith("sqlite") \
        else None
    env = {"DATABASE_URL": db_url, **FAL}
    if sqlite_file is not None:  # without a file, the database check itself says it
        code, data = health_json(cli, env)
        assert code == 2 and by_name(data)["database"]["hint"] == "run `imagen4ctl db upgrade`"
        assert not sqlite_file.exists()  # health creates nothing
        sqlite3.connect(sqlite_file).close()
    code, data = health_json(cli, env)
    assert (code, data["status"]) == (2, "CRITICAL")
    schema = by_name(data)["schema"]
    assert schema == {"name": "schema", "status": "CRITICAL",
                      "message": "the generations table does not exist",
                      "hint": "run `imagen4ctl db upgrade`"}
    result = cli("health", env=env)
    assert result.stdout.splitlines()[0] == ("CRITICAL: the generations table does not exist "
                                             "— run `imagen4ctl db upgrade`")


@pytest.mark.parametrize("args", [
    ["--window", "10x"], ["--window", "0"], ["--format", "xml"], ["--max-stuck", "abc"],
    ["--max-stuck", "-1"], ["--min-success", "1.5"], ["--min-success", "x"],
    ["--min-samples", "ten"], ["--timeout", "soon"],
])
def test_usage_errors_exit_3(cli: Cli, args: list[str]) -> None:
    result = cli("health", *args)
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"error: {args[0]}")
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["--bogus"], ["--window"], ["extra"]])
def test_click_usage_errors_exit_3_too(cli: Cli, args: list[str]) -> None:
    result = cli("health", *args)
    assert result.exit_code == 3, result.output
    assert "Error" in result.stderr and "Traceback" not in result.output
    assert cli("check-config", *args).exit_code == 2  # other commands keep click's code


def test_usage_errors_speak_the_format(cli: Cli) -> None:
    result = cli("health", "--format", "nagios", "--window", "10x")
    assert result.exit_code == 3
    assert result.stdout.startswith("IMAGEN4CTL UNKNOWN - --window: '10x' is not a duration")
    code, data = health_json(cli, {}, "--max-stuck", "abc")
    assert (code, data["status"], data["checks"][0]["name"]) == (3, "UNKNOWN", "usage")


def test_storage_check_is_read_only(
    cli: Cli, migrated_db: str, s3_bucket: Any, s3_env: dict[str, str], fal_emulator: Any
) -> None:
    s3_bucket.storage.put_bytes("generations/1/1/0.png", b"png", content_type="image/png")
    admin = s3_bucket.server.admin_client()

    def listing() -> list[tuple[str, bool]]:  # empty folders too: a deleted probe leaves one
        return sorted((o.object_name, o.is_dir) for prefix in ("", "generations/")
                      for recursive in (False, True)
                      for o in admin.list_objects(s3_bucket.name, prefix=prefix,
                                                  recursive=recursive))

    before = listing()
    env = {**s3_env, "DATABASE_URL": migrated_db, **FAL}
    code, data = health_json(cli, env)
    storage = by_name(data)["storage"]
    assert (code, storage["status"]) == (0, "OK"), data
    assert storage["message"] == f"s3://{s3_bucket.name} at {s3_env['MINIO_ENDPOINT']} exists " \
        "and lists (read-only check)"
    assert listing() == before
    code, data = health_json(cli, {**env, "MINIO_BUCKET": "no-such-bucket-x"})
    storage = by_name(data)["storage"]
    assert (code, storage["status"]) == (2, "CRITICAL")
    assert "'no-such-bucket-x' does not exist" in storage["message"]
    result = cli("health", "--format", "json", env={**env, "MINIO_SECRET_KEY": CANARY})
    assert by_name(result.json())["storage"]["status"] == "CRITICAL"  # type: ignore[arg-type]
    assert result.exit_code == 2
    assert_no_secret(result.output)


def test_fal_key_rejected_is_critical(
    cli: Cli, migrated_db: str, fal_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"DATABASE_URL": migrated_db, **FAL}
    assert health_json(cli, env)[0] == 0
    fal_emulator.accepted_keys = {"other"}
    code, data = health_json(cli, env)
    fal = by_name(data)["fal_api"]
    assert (code, fal["status"]) == (2, "CRITICAL")
    assert "rejected the key from FAL_KEY (401)" in fal["message"]
    assert fal["hint"] == "see `imagen4ctl check-config`"
    monkeypatch.delenv("FAL_KEY")
    code, data = health_json(cli, {})
    fal = by_name(data)["fal_api"]
    assert (code, fal["message"]) == (2, "no fal key: FAL_KEY is not set")


def test_no_secret_in_any_format(cli: Cli, s3_env: dict[str, str], fal_emulator: Any) -> None:
    env = {**s3_env, "FAL_KEY": CANARY + "1", "FAL_API_KEY": CANARY + "2",
           "MINIO_SECRET_KEY": CANARY, "DATABASE_URL": f"postgresql://bot:{CANARY}@127.0.0.1:1/db"}
    for fmt in ("text", "json", "nagios"):
        result = cli("health", "--format", fmt, "--timeout", "2", env=env)
        assert result.exit_code == 2
        assert_no_secret(result.output)
        assert "Traceback" not in result.output


def test_help(cli: Cli) -> None:
    result = cli("health", "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and "--max-stuck" in result.stdout
