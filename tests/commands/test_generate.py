"""`generate`: the real fal_client against the emulator over TLS, the real S3 server, SQLite
and PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import create_engine, select

from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import parse_database_url
from imagen4ctl.emulator import IMAGEN4_SIZES
from tests.conftest import CANARY, CliResult, assert_no_secret

Cli = Callable[..., CliResult]
KEY = "emulator-key-0001"


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


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("run=error:internal_error", "failed at fal"),
        ("run=noimages", "fal returned no images"),
        ("file=notimage", "not a PNG, JPEG or WebP image"),
        ("result=422", "fal refused the arguments"),
    ],
)
def test_fal_faults_fail_the_row_and_store_nothing(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any, directive: str, message: str
) -> None:
    result = cli("generate", f"broken [fault:{directive}]", env=env)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    [row] = rows(migrated_db)
    assert row.status == "FAILED" and row.error
    assert list(s3_bucket.storage.list("generations/")) == []


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


def test_timeout_in_queue_cancels_and_fails(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any
) -> None:
    fal_emulator.latency, fal_emulator.queue_fraction = 30.0, 0.9
    result = cli("generate", "queued forever", "--timeout", "1.5", env=env)
    assert result.exit_code == 1
    assert "timed out in queue, cancelled before it ran" in result.stderr
    [row] = rows(migrated_db)
    assert (row.status, row.error) == ("FAILED", "timed out in queue, cancelled before it ran")


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
