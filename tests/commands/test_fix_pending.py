"""`fix-pending` on SQLite and PostgreSQL with the emulator and SeaweedFS.

When fal's Platform API will not answer (401/403, or a 404 of the listing route itself from a
wrong FAL_PLATFORM_API_URL), that is a failure to ask, not a verdict: the row stays as it
was, the plan says "could not ask", exit 1; never failed, deleted or resubmitted for it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import parse_database_url
from imagen4ctl.emulator import FalEmulator
from tests.commands.test_generate import KEY, LOCKED, rows
from tests.conftest import CANARY, CliResult, assert_no_secret
from tests.factories import ago, bot_row, incident_rows, insert_rows, sql

Cli = Callable[..., CliResult]
UNKNOWN_ID = "00000000-dead-beef-0000-000000000000"


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY}


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


def test_resubmit_never_drops_what_the_endpoint_no_longer_takes(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PENDING", age=timedelta(hours=1),
                                      params={"num_images": 1, "negative_prompt": "blur"})])
    result, data = fix(cli, env, "--apply", "--resubmit")
    assert result.exit_code == 1
    [item] = data["items"]
    assert (item["action"], item["outcome"]) == ("skip", "skipped")
    assert item["error"] == ("not resubmitted: fal-ai/imagen4/preview does not take the row's "
                             "negative_prompt — never submitted")
    assert rows(migrated_db)[0].status == "PENDING"
    assert fal_emulator.log.submission_count() == 0


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
    fal_emulator.faults = "platform=403"  # more below
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


@pytest.mark.usefixtures("locked_key")
def test_fix_pending_resubmit_stops_at_the_lock(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    from tests.factories import incident_rows, insert_rows

    insert_rows(migrated_db, incident_rows("42"))
    result = cli("fix-pending", "--apply", "--resubmit", "--concurrency", "1", "--json",
                 env=env)
    assert result.exit_code == 1
    assert fal_emulator.log.submission_count() == 1
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    errors = sorted(i["error"] for i in items)
    assert errors == [LOCKED] + ["not submitted: account locked"] * 4
    stuck = [r for r in rows(migrated_db) if r.kind == "imagen4"]
    assert {r.status for r in stuck} == {"FAILED"}


# --- fal's Platform API will not answer: could not ask, not a verdict ---


def state(db_url: str) -> list[tuple[Any, ...]]:
    """What a verdict would change: status, request id, error, keys, last change."""
    return [(r.status, r.fal_request_id, r.error, r.result_urls, r.updated_at)
            for r in rows(db_url)]


def fix_items(cli: Cli, env: dict[str, str], *args: str
              ) -> tuple[CliResult, list[dict[str, Any]]]:
    result, data = fix(cli, env, *args)
    return result, data["items"]


REFUSALS = [
    pytest.param({"faults": "platform=401"}, "refused to list requests of "
                 "fal-ai/imagen4/preview (401: ", id="401"),
    pytest.param({"faults": "platform=403"}, "refused to list requests of "
                 "fal-ai/imagen4/preview (403: ", id="403"),
    pytest.param({"url": "/v0"}, "has no request listing at ", id="route-404"),
]


def refuse(fal_emulator: FalEmulator, env: dict[str, str], how: dict[str, str]
           ) -> dict[str, str]:
    if "faults" in how:
        fal_emulator.faults = how["faults"]
        return env
    return {**env, "FAL_PLATFORM_API_URL": fal_emulator.base_url + how["url"]}


@pytest.mark.parametrize("args", [("--apply",), ("--apply", "--delete", "--backup", "b.jsonl")])
@pytest.mark.parametrize(("how", "said"), REFUSALS)
def test_a_request_the_queue_forgot_is_left_alone_when_the_platform_api_refuses(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator,
    how: dict[str, str], said: str, args: tuple[str, ...],
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id=UNKNOWN_ID)])
    before = state(migrated_db)
    result, [item] = fix_items(cli, refuse(fal_emulator, env, how), *args)

    assert result.exit_code == 1
    assert item["action"] == "skip"
    assert item["error"].startswith(f"could not ask: fal's Platform API {said}")
    assert item["error"].endswith("— fal does not know this request (expired?)")
    assert state(migrated_db) == before
    # the queue's 404 was not the end: the Platform API was asked before anything was decided
    asked = [e for e in fal_emulator.log.entries("status") if e.request_id == UNKNOWN_ID]
    assert [e.status for e in asked] == [404]
    last = fal_emulator.log.entries()[-1]
    assert last.path.endswith("/models/requests/by-endpoint") and last.at > asked[0].at
    assert fal_emulator.log.submission_count() == 0


def test_the_human_plan_says_could_not_ask(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id=UNKNOWN_ID)])
    fal_emulator.faults = "platform=403"
    result = cli("fix-pending", "--apply", env=env)
    assert result.exit_code == 1
    assert "could not ask" in result.stdout
    assert "owns" not in result.output


def test_a_queue_404_with_nothing_listed_is_still_a_verdict(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id=UNKNOWN_ID)])
    result, [item] = fix_items(cli, env, "--apply")
    assert result.exit_code == 0
    assert (item["action"], item["error"]) == ("fail",
                                               "fal does not know this request (expired?)")
    platform = fal_emulator.log.entries("platform")
    assert [e.path for e in platform] == ["/v1/models/requests/by-endpoint"]
    assert rows(migrated_db)[0].status == "FAILED"


@pytest.mark.parametrize(("how", "said"), REFUSALS)
def test_a_lost_submission_is_neither_failed_nor_resubmitted_when_the_platform_api_refuses(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator,
    how: dict[str, str], said: str,
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PENDING", age=timedelta(hours=1),
                                      submit_started_at=ago(hours=1))])
    before = state(migrated_db)
    result, [item] = fix_items(cli, refuse(fal_emulator, env, how), "--apply", "--resubmit",
                               "--force")
    assert result.exit_code == 1
    assert item["action"] == "skip"
    assert item["error"].startswith(f"could not ask: fal's Platform API {said}")
    assert item["error"].endswith("— submission state unknown")
    assert state(migrated_db) == before
    assert fal_emulator.log.submission_count() == 0


def test_an_expired_queue_result_is_not_failed_when_the_platform_api_refuses(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    """The plan saw COMPLETED in the queue; at apply the result has expired and the Platform
    API refuses: the row keeps its request id for a later run."""
    done = cli("generate", "expires", "--no-wait", "--user-id", "42", "--json", env=env)
    assert done.exit_code == 0, done.output
    request_id = done.json()["fal_request_id"]  # type: ignore[index]
    deadline = time.monotonic() + 10
    while fal_emulator.state(request_id) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.05)
    fal_emulator.result_ttl = fal_emulator.large_result_ttl = 0.0
    fal_emulator.faults = "platform=403"
    old = ago(hours=1)
    engine = create_engine(parse_database_url(migrated_db))
    with Session(engine) as session:
        for row in session.scalars(select(Generation)):
            row.updated_at = row.created_at = old
        session.commit()
    engine.dispose()
    before = state(migrated_db)

    result, [item] = fix_items(cli, env, "--apply")
    assert result.exit_code == 1
    assert (item["action"], item["outcome"]) == ("skip", "failed")
    assert item["error"].startswith("could not ask: fal's Platform API refused")
    [row] = rows(migrated_db)
    assert (row.status, row.fal_request_id) == ("PROCESSING", request_id)
    assert state(migrated_db)[0][:4] == before[0][:4]


def test_the_key_never_shows(cli: Cli, env: dict[str, str], migrated_db: str,
                             fal_emulator: FalEmulator) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id=UNKNOWN_ID)])
    fal_emulator.faults = "platform=403"
    for args in (("fix-pending",), ("fix-pending", "--json"), ("fix-pending", "--apply")):
        result = cli(*args, env={**env, "FAL_KEY": CANARY})
        assert result.exit_code == 1
        assert_no_secret(result.output)
