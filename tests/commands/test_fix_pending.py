"""`fix-pending` on SQLite and PostgreSQL with the emulator and SeaweedFS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from imagen4ctl.db.session import parse_database_url
from tests.commands.test_generate import KEY, rows
from tests.conftest import CliResult
from tests.factories import bot_row, incident_rows, insert_rows

Cli = Callable[..., CliResult]


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY}


def sql(db_url: str, statement: str, **params: Any) -> list[Any]:
    engine = create_engine(parse_database_url(db_url))
    with engine.begin() as connection:
        result = connection.execute(text(statement), params)
        found = list(result) if result.returns_rows else []
    engine.dispose()
    return found


def age_all(db_url: str, minutes: int = 60) -> None:
    """Make every row look unchanged for `minutes` (stuck past the 10m default)."""
    rows_ = sql(db_url, "SELECT id, updated_at FROM generations")
    for row_id, _ in rows_:
        sql(db_url, "UPDATE generations SET updated_at = :t, created_at = :t WHERE id = :id",
            t=bot_row("x", "x", "x", age=timedelta(minutes=minutes))["updated_at"], id=row_id)


def table(db_url: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in sql(db_url, "SELECT * FROM generations ORDER BY id")]


def fix(cli: Cli, env: dict[str, str], *args: str) -> tuple[CliResult, dict[str, Any]]:
    result = cli("fix-pending", *args, "--json", env=env)
    data = json.loads(result.stdout) if result.stdout.strip() else {}
    return result, data


def processing_row(cli: Cli, env: dict[str, str], prompt: str) -> int:
    """A real fal request whose row was left PROCESSING (as a crash or --no-wait leaves it)."""
    result = cli("generate", prompt, "--no-wait", "--user-id", "42", "--json", env=env)
    assert result.exit_code == 0, result.output
    data = result.json()
    assert isinstance(data, dict)
    return int(data["id"])


def test_incident_dry_run_changes_nothing(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    before = table(migrated_db)
    result, data = fix(cli, env)
    assert result.exit_code == 0, result.output
    assert data["dry_run"] is True and data["found"] == 5
    assert data["actions"] == {"recover": 0, "wait": 0, "fail": 5, "resubmit": 0,
                               "delete": 0, "skip": 0}
    assert {i["error"] for i in data["items"]} == {"never submitted"}
    assert table(migrated_db) == before
    human = cli("fix-pending", env=env)
    assert "dry run: nothing was changed" in human.output
    assert table(migrated_db) == before


def test_incident_apply_fails_them_with_a_reason(cli: Cli, env: dict[str, str],
                                                 migrated_db: str) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    result, data = fix(cli, env, "--apply")
    assert result.exit_code == 0, result.output
    assert {i["outcome"] for i in data["items"]} == {"done"}
    statuses = sql(migrated_db, "SELECT status, error, claimed_by FROM generations "
                   "WHERE kind = 'imagen4'")
    assert statuses == [("FAILED", "never submitted", None)] * 5
    assert sql(migrated_db, "SELECT count(*) FROM generations WHERE kind = 'avatar' "
               "AND status = 'COMPLETED'") == [(137,)]


def test_incident_resubmit_completes_all_five(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any, s3_bucket: Any
) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    result, data = fix(cli, env, "--apply", "--resubmit")
    assert result.exit_code == 0, result.output
    assert data["actions"]["resubmit"] == 5
    found = sql(migrated_db, "SELECT id, status, fal_request_id, result_urls FROM generations "
                "WHERE kind = 'imagen4' ORDER BY id")
    assert [r[1] for r in found] == ["COMPLETED"] * 5
    for row_id, _, request_id, keys in found:
        assert request_id
        keys = json.loads(keys) if isinstance(keys, str) else keys
        assert keys == [f"generations/42/{row_id}/0.png"]
        assert s3_bucket.storage.stat(keys[0]) is not None
    for n in range(5):
        assert fal_emulator.log.submission_count(prompt_contains=f"stuck {n}") == 1


def test_kind_defaults_to_imagen4(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    insert_rows(migrated_db, [bot_row("1", "avatar", "PENDING", age=timedelta(hours=2))])
    result, data = fix(cli, env, "--apply", "--resubmit")
    assert data["found"] == 0 and result.exit_code == 0
    assert sql(migrated_db, "SELECT status FROM generations") == [("PENDING",)]
    _, data = fix(cli, env, "--kind", "avatar")
    assert data["found"] == 1


def test_recover_a_completed_request_from_the_queue(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any, fal_emulator: Any
) -> None:
    row_id = processing_row(cli, env, "collect me")
    time.sleep(0.6)  # the emulator finishes it
    age_all(migrated_db)
    result, data = fix(cli, env)
    [item] = data["items"]
    assert (item["fal_status"], item["action"], item["source"]) == ("COMPLETED", "recover",
                                                                    "queue")
    result, data = fix(cli, env, "--apply")
    assert result.exit_code == 0, result.output
    assert data["items"][0]["outcome"] == "done"
    [row] = rows(migrated_db)
    assert row.status == "COMPLETED" and row.result_urls == [f"generations/42/{row_id}/0.png"]
    assert s3_bucket.storage.stat(row.result_urls[0]) is not None
    assert fal_emulator.log.submission_count(prompt_contains="collect me") == 1


def test_expired_queue_result_recovered_from_the_platform_api(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    fal_emulator.result_ttl = fal_emulator.large_result_ttl = 0.05
    processing_row(cli, env, "expired in the queue")
    time.sleep(0.8)
    age_all(migrated_db)
    result, data = fix(cli, env, "--apply")
    assert result.exit_code == 0, result.output
    [item] = data["items"]
    assert (item["action"], item["source"], item["outcome"]) == ("recover", "platform", "done")
    assert rows(migrated_db)[0].status == "COMPLETED"


def test_platform_api_refused_is_a_failure_to_ask_not_a_verdict(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    fal_emulator.result_ttl = fal_emulator.large_result_ttl = 0.05
    fal_emulator.faults = "platform=403"  # more in test_fix_pending_refusals.py
    processing_row(cli, env, "the lookup is refused")
    time.sleep(0.8)
    age_all(migrated_db)
    result, data = fix(cli, env, "--apply")
    assert result.exit_code == 1
    [item] = data["items"]
    assert item["action"] == "skip"
    assert item["error"].startswith("could not ask: fal's Platform API refused")
    assert rows(migrated_db)[0].status == "PROCESSING"


def test_running_request_is_left_waiting(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    processing_row(cli, env, "still going [fault:run=hang]")
    time.sleep(0.4)
    age_all(migrated_db)
    result, data = fix(cli, env, "--apply")
    assert result.exit_code == 0
    [item] = data["items"]
    assert (item["fal_status"], item["action"]) == ("IN_PROGRESS", "wait")
    assert rows(migrated_db)[0].status == "PROCESSING"


def test_completed_with_error_fails(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    processing_row(cli, env, "broken [fault:run=error:internal_error]")
    time.sleep(0.6)
    age_all(migrated_db)
    result, data = fix(cli, env, "--apply")
    [item] = data["items"]
    assert item["action"] == "fail" and item["error"].startswith("fal: ")
    [row] = rows(migrated_db)
    assert row.status == "FAILED" and row.error == item["error"]


def test_unknown_request_id_fails(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id="00000000-dead-beef-0000-000000000000")])
    result, data = fix(cli, env, "--apply")
    [item] = data["items"]
    assert item["action"] == "fail"
    assert "does not know this request" in item["error"]
    assert rows(migrated_db)[0].status == "FAILED"


def test_delete_needs_a_backup(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    result = cli("fix-pending", "--apply", "--delete", env=env)
    assert result.exit_code == 2
    assert "--delete needs --backup" in result.stderr
    assert len(rows(migrated_db)) == 142


def test_delete_with_backup_then_restore_every_column(
    cli: Cli, env: dict[str, str], migrated_db: str, isolated_env: Path
) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    before = table(migrated_db)
    backup = isolated_env / "stuck.jsonl"
    result, data = fix(cli, env, "--apply", "--delete", "--backup", str(backup))
    assert result.exit_code == 0, result.output
    assert data["actions"]["delete"] == 5
    assert len(backup.read_text().splitlines()) == 5
    assert len(rows(migrated_db)) == 137
    restored = cli("fix-pending", "--restore", str(backup), env=env)
    assert restored.exit_code == 0, restored.output
    assert "restored 5 rows" in restored.stdout
    assert table(migrated_db) == before
    again = cli("fix-pending", "--restore", str(backup), env=env)
    assert again.exit_code == 1 and "5 skipped" in again.stdout


def test_fal_rejecting_the_key_stops_before_any_row(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    fal_emulator.accepted_keys = {"another"}
    before = table(migrated_db)
    result = cli("fix-pending", "--apply", "--resubmit", env=env)
    assert result.exit_code == 1
    assert "rejected the key from FAL_KEY" in result.stderr
    assert "no row was touched" in result.stderr
    assert table(migrated_db) == before


def test_bad_older_than_is_a_usage_error(cli: Cli, env: dict[str, str]) -> None:
    result = cli("fix-pending", "--older-than", "-5m", env=env)
    assert result.exit_code == 2 and "--older-than" in result.stderr
