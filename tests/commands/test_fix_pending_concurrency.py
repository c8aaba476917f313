"""fix-pending as real processes: four at once handle each row once; kill -9 loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.commands.test_generate import KEY
from tests.factories import incident_rows, insert_rows, sql
from tests.reliability._workers import migrated_schema


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "imagen4ctl", *args],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def pg_env(pg_database: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_schema(pg_database, "par"), "FAL_KEY": KEY,
            "COLUMNS": "200"}


def test_four_parallel_runs_handle_each_row_once(pg_env: dict[str, str],
                                                 fal_emulator: Any) -> None:
    db = pg_env["DATABASE_URL"]
    rows = []
    for user in range(4):
        rows += [r | {"prompt": f"par-{user}-{r['prompt']}"}
                 for r in incident_rows(str(user)) if r["kind"] == "imagen4"]
    insert_rows(db, rows)  # 20 never-submitted rows
    fal_emulator.latency = 0.5
    runs = [spawn(pg_env, "fix-pending", "--apply", "--resubmit", "--concurrency", "4",
                  "--json") for _ in range(4)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    statuses = sql(db, "SELECT status, count(*) FROM generations GROUP BY status")
    assert statuses == [("COMPLETED", 20)]
    for user in range(4):
        for n in range(5):
            assert fal_emulator.log.submission_count(prompt_contains=f"par-{user}-stuck {n}") == 1
    assert sql(db, "SELECT count(*) FROM generations WHERE claimed_by IS NOT NULL") == [(0,)]


def test_killed_run_leaves_rows_the_next_run_finishes(pg_env: dict[str, str],
                                                      fal_emulator: Any) -> None:
    db = pg_env["DATABASE_URL"]
    insert_rows(db, [r | {"prompt": f"kill-{r['prompt']}"} for r in incident_rows("9")
                     if r["kind"] == "imagen4"])
    fal_emulator.latency = 3.0
    run = spawn(pg_env, "fix-pending", "--apply", "--resubmit", "--concurrency", "5")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until fal has every submission
        if fal_emulator.log.submission_count(prompt_contains="kill-stuck") >= 5:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    held = sql(db, "SELECT count(*) FROM generations WHERE claimed_by IS NOT NULL")
    assert held == [(5,)]  # the dead run's claims are still in the rows
    fal_emulator.latency = 0.2
    time.sleep(3.0)  # the five requests finish at fal
    after = spawn(pg_env, "fix-pending", "--apply", "--older-than", "0", "--json")
    out, err = after.communicate(timeout=120)
    assert after.returncode == 0, err
    assert sql(db, "SELECT status, count(*) FROM generations GROUP BY status") == [
        ("COMPLETED", 5)]
    assert fal_emulator.log.submission_count(prompt_contains="kill-stuck") == 5  # none twice


def test_two_seed_galleries_at_once_make_five_rows(pg_env: dict[str, str],
                                                   fal_emulator: Any) -> None:
    db = pg_env["DATABASE_URL"]
    fal_emulator.latency = 0.5
    runs = [spawn(pg_env, "seed-gallery", "--user-id", "77", "--json") for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    assert sql(db, "SELECT status, count(*) FROM generations GROUP BY status") == [
        ("COMPLETED", 5)]
    assert sql(db, "SELECT count(DISTINCT prompt) FROM generations") == [(5,)]
    assert fal_emulator.log.submission_count(prompt_contains="An old castle") == 1
