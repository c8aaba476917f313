"""`generate` and `seed-gallery` with a locked fal account: one line that says so, one
submission attempt for a whole batch, no row left PENDING, exit 1, the key never shown."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import parse_database_url
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.server import LOCK_REASONS
from tests.conftest import CANARY, CliResult, assert_no_secret

Cli = Callable[..., CliResult]
KEY = "emulator-key-0001"
LOCKED = "fal account locked: exhausted balance — top up in fal's billing dashboard"


def rows(db_url: str) -> list[Generation]:
    engine = create_engine(parse_database_url(db_url))
    with Session(engine) as session:
        found = list(session.scalars(select(Generation).order_by(Generation.id)))
    engine.dispose()
    return found


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: FalEmulator) -> dict[str, str]:
    fal_emulator.locked_keys = {KEY}
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42"}


def error_lines(result: CliResult) -> list[str]:
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]


def test_a_batch_of_20_makes_one_attempt_and_decides_every_row(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a lighthouse number {n}\n" for n in range(20)))
    result = cli("generate", "--from-file", str(prompts), "--concurrency", "4", env=env)

    assert result.exit_code == 1
    assert fal_emulator.log.submission_count() == 1
    assert fal_emulator.log.submissions()[0].status == 403
    error, hint = error_lines(result)
    assert error == (f"error: {LOCKED} (19 of 20 generations not submitted: FAILED \"not "
                     "submitted: account locked\")")
    assert "https://fal.ai/dashboard/billing" in hint and "README.md#fal-account-locked" in hint
    assert "account locked" in result.stdout  # the table says it too
    stored = rows(migrated_db)
    assert len(stored) == 20 and {r.status for r in stored} == {"FAILED"}
    assert [r.error for r in stored] == [LOCKED] + ["not submitted: account locked"] * 19


def test_the_batchs_json_names_each_rows_decision(
    cli: Cli, env: dict[str, str], fal_emulator: FalEmulator, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\n")
    result = cli("generate", "--from-file", str(prompts), "--json", env=env)
    assert result.exit_code == 1
    items = json.loads(result.stdout)
    assert [(i["status"], i["error"]) for i in items] == [
        ("FAILED", LOCKED), ("FAILED", "not submitted: account locked"),
        ("FAILED", "not submitted: account locked")]
    assert fal_emulator.log.submission_count() == 1


@pytest.mark.parametrize(("reason", "message"), [
    ("balance", LOCKED),
    ("top_up", "fal account locked: top-up required — top up in fal's billing dashboard"),
    ("admin", "fal account locked: admin lock — contact fal support"),
])
def test_one_generation_says_the_account_is_locked_not_check_the_key(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator,
    reason: str, message: str,
) -> None:
    fal_emulator.lock_reason = LOCK_REASONS[reason]
    result = cli("generate", "a lighthouse", env=env)
    assert result.exit_code == 1
    error, hint = error_lines(result)
    assert error == f"error: {message}"
    assert "FAL_KEY" not in error and "FAL_KEY" not in hint
    assert hint.endswith("(see README.md#fal-account-locked)")
    [row] = rows(migrated_db)
    assert (row.status, row.error) == ("FAILED", message)


def test_seed_gallery_stops_at_the_lock_and_a_rerun_after_the_top_up_completes(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    result = cli("seed-gallery", "--user-id", "42", env=env)
    assert result.exit_code == 1
    assert "account locked" in result.stderr
    assert fal_emulator.log.submission_count() == 1
    assert {r.status for r in rows(migrated_db)} == {"FAILED"}

    fal_emulator.locked_keys = set()  # topped up
    again = cli("seed-gallery", "--user-id", "42", env=env)
    assert again.exit_code == 0, again.output
    assert sum(r.status == "COMPLETED" for r in rows(migrated_db)) == 5


def test_the_key_never_shows(cli: Cli, env: dict[str, str], fal_emulator: FalEmulator,
                             migrated_db: str, tmp_path: Path) -> None:
    fal_emulator.locked_keys = {CANARY}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    for args in (("generate", "x"), ("generate", "--from-file", str(prompts)),
                 ("generate", "--from-file", str(prompts), "--json")):
        result = cli(*args, env={**env, "FAL_KEY": CANARY})
        assert result.exit_code == 1 and "account locked" in result.output
        assert_no_secret(result.output)
    for row in rows(migrated_db):
        assert_no_secret(row.error or "")


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
