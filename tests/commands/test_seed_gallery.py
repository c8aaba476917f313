"""`seed-gallery`: the five gallery prompts (or a file of them) generated once per user, against
the emulator, the real S3 server, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.commands.test_generate import KEY, rows
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
