"""`generate --model`: the endpoint's own rules before any row, the endpoint on the row, and
fal's width and height in `params`. The real fal_client against the emulator over TLS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from imagen4ctl.emulator import FalEmulator
from tests.commands.test_generate import rows
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
KEY = "emulator-key-0001"
FAST = "fal-ai/imagen4/preview/fast"


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: FalEmulator) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42"}


def test_resolution_on_fast_is_a_usage_error_naming_the_endpoint(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    result = cli("generate", "--model", FAST, "a cat", "--resolution", "2K", env=env)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: fal-ai/imagen4/preview/fast does not take --resolution",
        "hint: fal-ai/imagen4/preview and fal-ai/imagen4/preview/ultra take it; `imagen4ctl "
        "models` lists what each endpoint takes. (see README.md#usage-errors)",
    ]
    assert rows(migrated_db) == []
    assert fal_emulator.log.entries() == []


@pytest.mark.parametrize("model", [[], ["--model", "fal-ai/imagen4/preview/ultra"]])
def test_a_negative_prompt_is_refused_not_ignored(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator,
    model: list[str],
) -> None:
    result = cli("generate", *model, "a cat", "--negative-prompt", "blur", env=env)
    assert result.exit_code == 2
    endpoint = model[1] if model else "fal-ai/imagen4/preview"
    assert result.stderr.startswith(f"error: {endpoint} does not take --negative-prompt\n")
    assert rows(migrated_db) == [] and fal_emulator.log.entries() == []


def test_a_batch_is_checked_whole_before_any_row(
    cli: Cli, env: dict[str, str], migrated_db: str, tmp_path: Any
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n16:9\ta dog\n")
    result = cli("generate", "--from-file", str(prompts), "--model", FAST, "--resolution",
                 "1K", env=env)
    assert result.exit_code == 2
    assert "error: fal-ai/imagen4/preview/fast does not take --resolution" in result.stderr
    assert rows(migrated_db) == []


@pytest.mark.parametrize(("variable", "option"), [
    ({"IMAGEN4_MODEL": "fal-ai/imagen4/preview/fsat"}, []),
    ({}, ["--model", "fal-ai/imagen4/preview/fsat"]),
])
def test_an_unknown_model_is_one_line_naming_the_known_ids(
    cli: Cli, env: dict[str, str], migrated_db: str, variable: dict[str, str],
    option: list[str],
) -> None:
    result = cli("generate", "a cat", *option, env={**env, **variable})
    assert result.exit_code == 2
    source = "IMAGEN4_MODEL" if variable else "--model"
    assert result.stderr.splitlines() == [
        f"error: {source} 'fal-ai/imagen4/preview/fsat' is not an Imagen 4 endpoint "
        "imagen4ctl knows (fal-ai/imagen4/preview, fal-ai/imagen4/preview/fast, "
        "fal-ai/imagen4/preview/ultra)",
        "hint: Did you mean fal-ai/imagen4/preview/fast? `imagen4ctl models` lists what each "
        "endpoint takes. (see README.md#usage-errors)",
    ]
    assert rows(migrated_db) == []


def test_model_overrides_imagen4_model_and_is_recorded_on_the_row(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    env = {**env, "IMAGEN4_MODEL": "fal-ai/imagen4/preview/ultra"}
    result = cli("generate", "--model", FAST, "a quick fox", "-a", "16:9", "-n", "2", "--json",
                 env=env)
    assert result.exit_code == 0, result.output
    [row] = rows(migrated_db)
    assert (row.status, row.fal_endpoint) == ("COMPLETED", FAST)
    [submit] = fal_emulator.log.entries("submit")
    assert submit.path == f"/{FAST}"
    assert row.params == {"num_images": 2, "images": [{"width": 1408, "height": 768},
                                                      {"width": 1408, "height": 768}]}


def test_imagen4_model_is_the_default_and_its_rules_apply(
    cli: Cli, env: dict[str, str], migrated_db: str
) -> None:
    env = {**env, "IMAGEN4_MODEL": "fal-ai/imagen4/preview/ultra"}
    result = cli("generate", "a slow fox", "--resolution", "2K", "--seed", "7", env=env)
    assert result.exit_code == 0, result.output
    [row] = rows(migrated_db)
    assert row.fal_endpoint == "fal-ai/imagen4/preview/ultra"
    assert row.params == {"num_images": 1, "seed": 7, "resolution": "2K",
                          "images": [{"width": 2048, "height": 2048}]}
    refused = cli("generate", "a fox", "--resolution", "2K",
                  env={**env, "IMAGEN4_MODEL": FAST})
    assert refused.exit_code == 2
    assert "error: fal-ai/imagen4/preview/fast does not take --resolution" in refused.stderr
    assert len(rows(migrated_db)) == 1


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


def test_the_help_of_the_options_comes_from_the_registry(cli: Cli) -> None:
    result = cli("generate", "--help", env={"COLUMNS": "250"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "1:1, 16:9, 9:16, 4:3 or 3:4." in text
    assert "1K or 2K. Not taken by fal-ai/imagen4/preview/fast." in text
    assert "Taken by no current Imagen 4 endpoint at fal: refused." in text
    assert ("The fal endpoint: fal-ai/imagen4/preview, fal-ai/imagen4/preview/fast or "
            "fal-ai/imagen4/preview/ultra (default: IMAGEN4_MODEL).") in text
