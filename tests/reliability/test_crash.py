"""Crash safety: `generate` and `seed-gallery` killed (SIGKILL) at each phase, then
`fix-pending --apply`: every row ends COMPLETED with its image stored, or FAILED with a
reason; no fal request is submitted twice; `reconcile` reports any leftover object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.commands.test_generate import KEY, rows
from tests.factories import sql

PHASES = ["before_submit", "after_submit", "queued", "running", "downloading", "uploading",
          "stored"]


def run(env: dict[str, str], *args: str,
        crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = {"IMAGEN4CTL_CRASH_AT": crash_at} if crash_at else {}
    return subprocess.run([sys.executable, "-m", "imagen4ctl", *args],
                          env={**os.environ, **env, **extra}, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    fal_emulator.latency, fal_emulator.queue_fraction = 0.6, 0.5
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42"}


def settle(env: dict[str, str]) -> dict[str, Any]:
    """What an operator does after a crash: let fal finish, then fix-pending."""
    time.sleep(1.0)
    result = run(env, "fix-pending", "--apply", "--older-than", "0", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.mark.parametrize("phase", PHASES)
def test_generate_killed_at_each_phase(env: dict[str, str], migrated_db: str, s3_bucket: Any,
                                       fal_emulator: Any, phase: str) -> None:
    prompt = f"crash-{phase}"
    crashed = run(env, "generate", prompt, "--num-images", "2", crash_at=phase)
    assert crashed.returncode == -signal.SIGKILL
    data = settle(env)
    [row] = rows(migrated_db)
    assert row.status in {"COMPLETED", "FAILED"}, (phase, row.status, data)
    if row.status == "COMPLETED":
        assert row.result_urls and len(row.result_urls) == 2
        for key in row.result_urls:
            info = s3_bucket.storage.stat(key)
            assert info is not None and info.size > 0
    else:
        assert row.error
    if phase == "before_submit":  # nothing reached fal: recovery must not guess
        assert (row.status, row.error) == ("FAILED", "submission state unknown")
    else:
        assert row.status == "COMPLETED", row.error
    submissions = fal_emulator.log.submission_count(prompt_contains=prompt)
    assert submissions == (0 if phase == "before_submit" else 1)
    check = run(env, "reconcile", "--json")
    report = json.loads(check.stdout)
    keys = set(row.result_urls or [])
    leftovers = [o.key for o in s3_bucket.storage.list("generations/") if o.key not in keys]
    reported = {p["key"] for p in report["items"] if p["type"] == "orphan_object"}
    assert set(leftovers) <= reported


def test_seed_gallery_killed_mid_batch(env: dict[str, str], migrated_db: str, s3_bucket: Any,
                                       fal_emulator: Any) -> None:
    crashed = run(env, "seed-gallery", "--concurrency", "2", crash_at="running")
    assert crashed.returncode == -signal.SIGKILL
    settle(env)
    found = rows(migrated_db)
    assert len(found) == 5
    assert all(r.status in {"COMPLETED", "FAILED"} and (r.status == "COMPLETED" or r.error)
               for r in found)
    again = run(env, "seed-gallery", "--json")
    assert again.returncode == 0, again.stderr
    completed = sql(migrated_db, "SELECT count(DISTINCT prompt) FROM generations "
                    "WHERE status = 'COMPLETED'")
    assert completed == [(5,)]
    for prompt in ("Beautiful sunset", "A cat playing", "Cosmic landscape", "Blooming garden",
                   "An old castle"):
        accepted = [e for e in fal_emulator.log.submissions(prompt_contains=prompt)
                    if e.status == 200]
        submitted_rows = sql(migrated_db, "SELECT count(*) FROM generations WHERE prompt LIKE "
                             ":p AND fal_request_id IS NOT NULL", p=prompt + "%")
        assert len(accepted) == submitted_rows[0][0]  # one fal request per row that has one
