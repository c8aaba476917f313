"""`seed-gallery`: the five gallery prompts (or a file of them) generated once per user, against
the emulator, the real S3 server, SQLite and PostgreSQL; held to IMAGEN4_MODEL's rules, and
stopped by a locked fal account."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from imagen4ctl.emulator import FalEmulator
from tests.commands.test_generate import FAST, KEY, rows
from tests.conftest import CliResult

Cli = Callable[..., CliResult]


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42"}


def test_seed_gallery_twice_still_five_rows(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any, fal_emulator: Any
) -> None:
    first = cli("seed-gallery", "--json", env=env)
    assert first.exit_code == 0, first.output
    data = first.json()
    assert isinstance(data, dict)
    assert [(i["prompt"], i["aspect_ratio"]) for i in data["items"]] == [
        ("Beautiful sunset over the mountains", "1:1"), ("A cat playing with a ball", "3:4"),
        ("Cosmic landscape", "16:9"), ("Blooming garden in spring", "1:1"),
        ("An old castle", "3:4")]
    second = cli("seed-gallery", "--json", env=env)
    assert second.exit_code == 0
    assert second.json() == {"user_id": "42", "skipped": 5, "items": []}
    found = rows(migrated_db)
    assert len(found) == 5 and {r.status for r in found} == {"COMPLETED"}
    assert len(list(s3_bucket.storage.list("generations/42/"))) == 5
    assert fal_emulator.log.submission_count(prompt_contains="An old castle") == 1


def test_seed_gallery_from_file(cli: Cli, env: dict[str, str], migrated_db: str,
                                isolated_env: Any) -> None:
    prompts = isolated_env / "prompts.txt"
    prompts.write_text("# mine\n16:9\tA harbour at dawn\nA plain line\n\n")
    result = cli("seed-gallery", "--prompts", str(prompts), "--concurrency", "2", env=env)
    assert result.exit_code == 0, result.output
    assert sorted((r.prompt, r.aspect_ratio) for r in rows(migrated_db)) == [
        ("A harbour at dawn", "16:9"), ("A plain line", "1:1")]


def test_seed_gallery_is_held_to_imagen4_models_rules(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    result = cli("seed-gallery", env={**env, "IMAGEN4_MODEL": "fal-ai/imagen4/preview/fsat"})
    assert result.exit_code == 2
    assert "error: IMAGEN4_MODEL 'fal-ai/imagen4/preview/fsat' is not an Imagen 4 endpoint" \
        in result.stderr
    assert rows(migrated_db) == [] and fal_emulator.log.entries("submit") == []
    done = cli("seed-gallery", "--json", env={**env, "IMAGEN4_MODEL": FAST})
    assert done.exit_code == 0, done.output
    assert {row.fal_endpoint for row in rows(migrated_db)} == {FAST}


@pytest.mark.usefixtures("locked_key")
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
