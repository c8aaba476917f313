"""`generate`: the real fal_client against the emulator over TLS, the real S3 server, SQLite
and PostgreSQL. `--model`: the endpoint's own rules before any row, the endpoint on the row,
fal's width and height in `params`. A locked fal account: one line that says so, one
submission attempt for a whole batch, no row left PENDING, exit 1, the key never shown."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import create_engine, select

from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import parse_database_url
from imagen4ctl.emulator import IMAGEN4_SIZES, FalEmulator
from imagen4ctl.emulator.server import LOCK_REASONS
from tests.conftest import CANARY, CliResult, assert_no_secret

Cli = Callable[..., CliResult]
KEY = "emulator-key-0001"
FAST = "fal-ai/imagen4/preview/fast"
LOCKED = "fal account locked: exhausted balance — top up in fal's billing dashboard"


def rows(db_url: str) -> list[Generation]:
    engine = create_engine(parse_database_url(db_url))
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        found = list(session.scalars(select(Generation).order_by(Generation.id)))
    engine.dispose()
    return found


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42"}


@pytest.mark.parametrize("ratio", ["1:1", "16:9", "9:16", "3:4", "4:3"])
def test_every_aspect_ratio_lands_in_the_bucket(
    cli: Cli, env: dict[str, str], s3_bucket: Any, migrated_db: str, ratio: str
) -> None:
    result = cli("generate", f"A lighthouse {ratio}", "--aspect-ratio", ratio, "--json", env=env)
    assert result.exit_code == 0, result.output
    data = result.json()
    assert isinstance(data, dict)
    assert data["status"] == "COMPLETED" and data["error"] is None
    [image] = data["images"]
    width, height = IMAGEN4_SIZES[ratio]
    assert (image["width"], image["height"]) == (width, height)
    stored = s3_bucket.storage.get(image["key"])
    assert len(stored) == image["size"]
    assert Image.open(io.BytesIO(stored)).size == (width, height)
    [row] = rows(migrated_db)
    assert row.status == "COMPLETED"
    assert row.result_urls == [image["key"]]
    assert image["key"] == f"generations/42/{row.id}/0.png"
    assert row.fal_request_id == data["fal_request_id"]
    assert row.fal_endpoint == "fal-ai/imagen4/preview"
    assert row.submitted_at is not None and row.completed_at is not None
    assert row.created_at.tzinfo is not None


def test_incident_only_fal_api_key_completes(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    env = {**env, "FAL_API_KEY": env.pop("FAL_KEY")}
    result = cli("generate", "Beautiful sunset over the mountains", env=env)
    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.stdout
    assert rows(migrated_db)[0].status == "COMPLETED"
    assert fal_emulator.log.submission_count(prompt_contains="Beautiful sunset", key=KEY) == 1


def test_no_key_writes_no_row(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    del env["FAL_KEY"]
    result = cli("generate", "anything", env=env)
    assert result.exit_code == 1
    assert "error: no fal key: FAL_KEY is not set (nothing was written)" in result.stderr
    assert "hint: Set FAL_KEY (or FAL_API_KEY)" in result.stderr
    assert rows(migrated_db) == []


def test_rejected_key_fails_the_row_with_a_reason(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    fal_emulator.accepted_keys = {"some-other-key"}
    result = cli("generate", "anything", env={**env, "FAL_KEY": CANARY})
    assert result.exit_code == 1
    assert "error: fal rejected the key from FAL_KEY (401" in result.stderr
    [row] = rows(migrated_db)
    assert row.status == "FAILED"
    assert row.error is not None and "rejected the key from FAL_KEY" in row.error
    assert_no_secret(result.output + row.error)


def test_fal_422_is_a_clean_error(cli: Cli, env: dict[str, str], migrated_db: str) -> None:
    result = cli("generate", "a cat [fault:submit=422]", env=env)
    assert result.exit_code == 1
    assert "\nerror: fal refused the arguments: " in result.stderr
    assert "Traceback" not in result.output
    assert rows(migrated_db)[0].status == "FAILED"


def test_no_wait_leaves_processing_with_request_id(
    cli: Cli, env: dict[str, str], migrated_db: str
) -> None:
    result = cli("generate", "slow one", "--no-wait", "--json", env=env)
    assert result.exit_code == 0
    data = result.json()
    assert isinstance(data, dict)
    [row] = rows(migrated_db)
    assert (row.status, row.fal_request_id) == ("PROCESSING", data["fal_request_id"])
    assert data["status"] == "PROCESSING" and data["fal_request_id"]


def test_image_over_the_cap(cli: Cli, env: dict[str, str], migrated_db: str,
                            s3_bucket: Any) -> None:
    env = {**env, "IMAGEN4_MAX_IMAGE_BYTES": "1MB"}
    result = cli("generate", "huge [fault:file=large:3MB]", "--num-images", "2", env=env)
    assert result.exit_code == 1
    assert "cap (IMAGEN4_MAX_IMAGE_BYTES)" in result.stderr
    assert rows(migrated_db)[0].status == "FAILED"
    assert list(s3_bucket.storage.list("generations/")) == []


def test_a_429_storm_is_ridden_out_with_one_submission(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    result = cli("generate", "storm [fault:submit=429x3]", env=env)
    assert result.exit_code == 0, result.output
    assert rows(migrated_db)[0].status == "COMPLETED"
    accepted = [e for e in fal_emulator.log.submissions(prompt_contains="storm")
                if e.status == 200]
    assert len(accepted) == 1


def test_timeout_while_running_leaves_processing(
    cli: Cli, env: dict[str, str], migrated_db: str
) -> None:
    result = cli("generate", "never ends [fault:run=hang]", "--timeout", "1.5", env=env)
    assert result.exit_code == 1
    assert "still running at fal" in result.stderr
    assert "fix-pending" in result.stderr
    [row] = rows(migrated_db)
    assert row.status == "PROCESSING" and row.fal_request_id


def test_lost_submission_answer_is_not_resubmitted(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    result = cli("generate", "lost answer [fault:submit=drop]", "--timeout", "5", env=env)
    assert result.exit_code == 1
    assert "submission state unknown" in result.stderr
    [row] = rows(migrated_db)
    assert row.status == "PENDING" and row.submit_started_at is not None
    assert row.fal_request_id is None
    assert fal_emulator.log.submission_count(prompt_contains="lost answer") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", "--user-id", "1"], "the prompt is empty"),
        (["   ", "--user-id", "1"], "the prompt is empty"),
        (["x" * 10_000, "--user-id", "1"], "the limit is 4,000"),
        (["a\x00b", "--user-id", "1"], "NUL"),
        (["x", "--aspect-ratio", "2:1", "--user-id", "1"], "aspect ratio '2:1'"),
        (["x", "--aspect-ratio", "1:1 ", "--user-id", "1"], "aspect ratio '1:1 '"),
        (["x", "--num-images", "5", "--user-id", "1"], "1 to 4"),
        (["x", "--num-images", "0", "--user-id", "1"], "1 to 4"),
        (["x", "--user-id", "../../etc/passwd"], "user id"),
        (["x", "--user-id", "a/b"], "user id"),
        (["x", "--user-id", "u" * 300], "user id"),
        (["x"], "no user id"),
    ],
)
def test_bad_input_is_exit_2_and_writes_nothing(
    cli: Cli, env: dict[str, str], migrated_db: str, args: list[str], message: str
) -> None:
    del env["IMAGEN4_USER_ID"]
    result = cli("generate", *args, env=env)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert rows(migrated_db) == []


def test_local_folder_storage(cli: Cli, migrated_db: str, isolated_env: Any) -> None:
    env = {"DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGES_DIR": "pics"}
    result = cli("generate", "to the folder", "--user-id", "7", "--json", env=env)
    assert result.exit_code == 0, result.output
    data = result.json()
    assert isinstance(data, dict)
    key = data["images"][0]["key"]
    assert (isolated_env / "pics" / key).stat().st_size == data["images"][0]["size"]


def test_batch_from_file(cli: Cli, env: dict[str, str], migrated_db: str, isolated_env: Any,
                         fal_emulator: Any) -> None:
    prompts = isolated_env / "prompts.txt"
    prompts.write_text("# a batch\n16:9\tbatch one\nbatch two\n3:4\tbatch three\n")
    result = cli("generate", "--from-file", str(prompts), "--concurrency", "3", "--json",
                 env=env)
    assert result.exit_code == 0, result.output
    data = result.json()
    assert isinstance(data, list)
    assert [(i["prompt"], i["aspect_ratio"], i["status"]) for i in data] == [
        ("batch one", "16:9", "COMPLETED"), ("batch two", "1:1", "COMPLETED"),
        ("batch three", "3:4", "COMPLETED")]
    assert fal_emulator.log.submission_count(prompt_contains="batch ") == 3
    assert len(rows(migrated_db)) == 3


def test_batch_with_a_failure_exits_1_with_a_table(cli: Cli, env: dict[str, str],
                                                   migrated_db: str, isolated_env: Any) -> None:
    prompts = isolated_env / "prompts.txt"
    prompts.write_text("fine\nbroken [fault:run=noimages]\n")
    result = cli("generate", "--from-file", str(prompts), env=env)
    assert result.exit_code == 1
    assert "error: 1 of 2 generations did not complete" in result.stderr
    assert "fal returned no images" in result.stdout
    assert sorted(r.status for r in rows(migrated_db)) == ["COMPLETED", "FAILED"]


def test_prompt_and_file_are_exclusive(cli: Cli, env: dict[str, str], isolated_env: Any) -> None:
    prompts = isolated_env / "p.txt"
    prompts.write_text("x\n")
    assert cli("generate", "x", "--from-file", str(prompts), env=env).exit_code == 2
    assert cli("generate", env=env).exit_code == 2


# --- --model: the endpoint's rules ---


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


def test_the_help_of_the_options_comes_from_the_registry(cli: Cli) -> None:
    result = cli("generate", "--help", env={"COLUMNS": "250"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "1:1, 16:9, 9:16, 4:3 or 3:4." in text
    assert "1K or 2K. Not taken by fal-ai/imagen4/preview/fast." in text
    assert "Taken by no current Imagen 4 endpoint at fal: refused." in text
    assert ("The fal endpoint: fal-ai/imagen4/preview, fal-ai/imagen4/preview/fast or "
            "fal-ai/imagen4/preview/ultra (default: IMAGEN4_MODEL).") in text


# --- a locked fal account (the key in `locked_key`) ---


def error_lines(result: CliResult) -> list[str]:
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.startswith(("error:", "hint:"))]


@pytest.mark.usefixtures("locked_key")
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


@pytest.mark.usefixtures("locked_key")
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


@pytest.mark.usefixtures("locked_key")
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


@pytest.mark.usefixtures("locked_key")
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


# --- how a generation hears from fal: --debug says, IMAGEN4_FOLLOW chooses ---


def test_debug_says_the_generation_was_followed_by_the_stream(
    cli: Cli, env: dict[str, str], fal_emulator: FalEmulator, migrated_db: str
) -> None:
    fal_emulator.accepted_keys = {CANARY}
    result = cli("--debug", "generate", "streamed", env={**env, "FAL_KEY": CANARY})
    assert result.exit_code == 0, result.output
    [row] = rows(migrated_db)
    assert f"debug: generation {row.id} followed by fal's status stream" in result.stderr
    assert [e.kind for e in fal_emulator.log.for_request(row.fal_request_id or "")
            if e.kind != "file"] == ["submit", "stream", "result"]
    assert_no_secret(result.output)
    assert "followed by" not in cli("generate", "quiet", env=env).stderr  # only with --debug


def test_debug_says_how_each_of_a_batch_was_followed(
    cli: Cli, env: dict[str, str], isolated_env: Any
) -> None:
    prompts = isolated_env / "prompts.txt"
    prompts.write_text("one\ntwo [fault:stream=refuse]\nthree\n")
    result = cli("--debug", "generate", "--from-file", str(prompts), "--json", env=env)
    assert result.exit_code == 0, result.output
    assert "debug: 2 generation(s) followed by fal's status stream\n" in result.stderr
    assert ("debug: 1 generation(s) followed by polling every 0.1s, after the status stream "
            "was refused: fal answered the status stream with 404: Not Found") in result.stderr
    assert isinstance(result.json(), list)  # stdout stays JSON


def test_imagen4_follow_poll_never_opens_the_stream(
    cli: Cli, env: dict[str, str], fal_emulator: FalEmulator
) -> None:
    result = cli("--debug", "generate", "polled", env={**env, "IMAGEN4_FOLLOW": "poll"})
    assert result.exit_code == 0, result.output
    assert "followed by polling every 0.1s, as asked" in result.stderr
    assert fal_emulator.log.entries("stream") == []
    assert fal_emulator.log.entries("status")


def test_a_bad_imagen4_follow_is_one_line_naming_it(cli: Cli, env: dict[str, str],
                                                    migrated_db: str) -> None:
    result = cli("generate", "x", env={**env, "IMAGEN4_FOLLOW": "push"})
    assert result.exit_code != 0
    assert "error: IMAGEN4_FOLLOW must be auto, stream or poll, not 'push'" in result.stderr
    assert rows(migrated_db) == []
