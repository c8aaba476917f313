"""A passing fault never costs a paid image: after fal accepted a submission only fal's own
verdict fails the row; anything else leaves it in flight with its last error, the command
exits 1 pointing at fix-pending, and fix-pending finishes it once the fault has passed —
without a second submission. The real CLI, fal_client, emulator, S3 server and databases."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl.adapters.fal import FalAdapter
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.services.generation import GenerationSpec
from tests.commands.test_generate import KEY, rows
from tests.conftest import CliResult
from tests.services.conftest import MakeService

Cli = Callable[..., CliResult]
FIX_PENDING = "Run `imagen4ctl fix-pending --apply`"


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: FalEmulator) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42"}


def stored(s3_bucket: Any) -> list[str]:
    return [info.key for info in s3_bucket.storage.list("generations/")]


def wait_until(emulator: FalEmulator, state: str, within: float = 20.0) -> str:
    """The emulator's only request, once it has reached `state`."""
    deadline = time.monotonic() + within
    while True:
        ids = emulator.request_ids()
        if len(ids) == 1 and emulator.state(ids[0]) == state:
            return ids[0]
        assert time.monotonic() < deadline, f"no request reached {state}"
        time.sleep(0.02)


def left_in_flight(result: CliResult, db_url: str, error: str) -> Any:
    """The run stopped on a fault that may pass: exit 1, fix-pending named, the row
    PROCESSING with its request id and the fault as its last error."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert FIX_PENDING in result.stderr
    [row] = rows(db_url)
    assert row.status == "PROCESSING" and row.fal_request_id
    assert row.error is not None and error in row.error, row.error
    return row


def completed_by_fix_pending(cli: Cli, env: dict[str, str], db_url: str, s3_bucket: Any,
                             *args: str) -> Any:
    fixed = cli("fix-pending", "--apply", *args, env=env)
    assert fixed.exit_code == 0, fixed.output
    [row] = rows(db_url)
    assert (row.status, row.error) == ("COMPLETED", None)
    assert row.result_urls and stored(s3_bucket) == row.result_urls
    return row


# --- faults that pass: in flight, then fix-pending ---


def test_a_result_call_dropped_once_is_collected_by_the_next_fix_pending(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any, fal_emulator: FalEmulator
) -> None:
    result = cli("generate", "dropped once [fault:result=dropx1]", env=env)
    row = left_in_flight(result, migrated_db, "result: cannot reach fal")
    assert "connection dropped" in row.error
    assert stored(s3_bucket) == []

    done = completed_by_fix_pending(cli, env, migrated_db, s3_bucket)
    assert done.fal_request_id == row.fal_request_id
    assert fal_emulator.log.submission_count(prompt_contains="dropped once") == 1
    assert fal_emulator.log.queued_count() == 1


def test_an_image_url_answering_503_once_is_collected_by_the_next_fix_pending(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any, fal_emulator: FalEmulator
) -> None:
    result = cli("generate", "cdn hiccup [fault:file=503x1]", env=env)
    left_in_flight(result, migrated_db, "download: the image URL answered 503")
    assert stored(s3_bucket) == []
    completed_by_fix_pending(cli, env, migrated_db, s3_bucket)
    assert fal_emulator.log.submission_count(prompt_contains="cdn hiccup") == 1


def test_a_connection_reset_during_the_download_is_a_passing_fault(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any
) -> None:
    result = cli("generate", "reset [fault:file=dropx1]", env=env)
    left_in_flight(result, migrated_db, "download: cannot download the image")
    completed_by_fix_pending(cli, env, migrated_db, s3_bucket)


@pytest.mark.parametrize(("fault", "error"), [
    ("stream=refuse,status=503", "status: fal answered the status with 503"),
    ("stream=refuse,status=drop", "status: cannot reach fal"),
    ("result=503", "result: fal answered the result with 503"),
    ("result=ingress502", "result: fal did not answer the result in time"),
    ("result=malformed", "result: fal sent a malformed answer"),
])
def test_fal_s_own_faults_after_the_submission_leave_the_row_in_flight(
    cli: Cli, env: dict[str, str], migrated_db: str, fault: str, error: str
) -> None:
    result = cli("generate", f"in flight [fault:{fault}]", "--timeout", "3", env=env)
    left_in_flight(result, migrated_db, error)


def test_fix_pending_takes_a_handed_over_row_at_once_unless_told_an_age(
    cli: Cli, env: dict[str, str], migrated_db: str
) -> None:
    """The command just said "run fix-pending": the row must not wait for STUCK_AFTER."""
    left_in_flight(cli("generate", "handed over [fault:stream=refuse,status=503]", env=env),
                   migrated_db, "status: fal answered the status with 503")
    dry = cli("fix-pending", "--json", env=env)
    assert [item["id"] for item in dry.json()["items"]] == [rows(migrated_db)[0].id]  # type: ignore[index]
    aged = cli("fix-pending", "--older-than", "1h", "--json", env=env)
    assert aged.json()["found"] == 0  # type: ignore[index]


def test_an_ingress_502_after_queueing_is_adopted_never_resubmitted(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any, fal_emulator: FalEmulator
) -> None:
    result = cli("generate", "lost answer [fault:submit=queued:ingress502]", env=env)
    assert result.exit_code == 1
    assert "submission state unknown: fal's ingress answered the submission with 502" in \
        result.stderr
    [row] = rows(migrated_db)
    assert (row.status, row.fal_request_id) == ("PENDING", None)
    assert row.submit_started_at is not None
    wait_until(fal_emulator, "COMPLETED")

    completed_by_fix_pending(cli, env, migrated_db, s3_bucket, "--older-than", "0")
    assert fal_emulator.log.submission_count(prompt_contains="lost answer") == 1
    assert fal_emulator.log.queued_count() == 1


# --- fal's verdicts fail the row ---


@pytest.mark.parametrize(("fault", "error"), [
    ("run=error:internal_error", "Internal server error"),
    ("result=422", "fal refused the arguments"),
    ("result=400", "fal answered the result with 400"),
    ("run=noimages", "fal returned no images"),
    ("file=notimage", "not a PNG, JPEG or WebP image"),
])
def test_fal_s_verdict_fails_the_row_at_once(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any, fault: str, error: str
) -> None:
    result = cli("generate", f"verdict [fault:{fault}]", env=env)
    assert result.exit_code == 1 and error in result.stderr
    assert "Traceback" not in result.output
    [row] = rows(migrated_db)
    assert row.status == "FAILED" and row.error is not None and error in row.error
    assert stored(s3_bucket) == []


def test_an_image_gone_for_good_fails_once_the_platform_api_has_nothing_better(
    cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any, fal_emulator: FalEmulator
) -> None:
    left_in_flight(cli("generate", "gone [fault:file=404]", env=env), migrated_db,
                   "download: the image URL answered 404")
    fixed = cli("fix-pending", "--apply", env=env)
    assert fixed.exit_code == 0, fixed.output
    [failed] = rows(migrated_db)
    assert (failed.status, failed.error) == ("FAILED", "the image URL answered 404")
    assert fal_emulator.log.entries("platform"), "fal's Platform API was asked for another copy"
    assert stored(s3_bucket) == []


# --- the deadline: a cancel is a request, not a fact ---


def test_a_cancel_while_queued_fails_the_row_once_fal_confirms_it(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency, fal_emulator.queue_fraction = 30.0, 0.9
    result = cli("generate", "queued forever", "--timeout", "1.5", env=env)
    assert result.exit_code == 1
    assert "timed out in queue, cancelled before it ran" in result.stderr
    [row] = rows(migrated_db)
    assert (row.status, row.error) == ("FAILED", "timed out in queue, cancelled before it ran")
    calls = [(e.kind, e.status) for e in fal_emulator.log.for_request(row.fal_request_id)]
    cancel = calls.index(("cancel", 202))
    assert calls[cancel + 1:] == [("status", 200)]  # one status call: COMPLETED, cancelled


@dataclass
class CancelArrivesRunning(FalAdapter):
    """fal's real queue, with the cancel held back until the request has begun to run: the
    race between a last IN_QUEUE status and the cancel, made certain."""

    emulator: FalEmulator | None = None
    answers: list[str] = field(default_factory=list)

    def cancel(self, endpoint: str, request_id: str, deadline: Deadline) -> str:
        assert self.emulator is not None
        while self.emulator.state(request_id) == "IN_QUEUE":
            time.sleep(0.01)
        self.answers.append(super().cancel(endpoint, request_id, deadline))
        return self.answers[-1]


def race_cancel(make_service: MakeService, emulator: FalEmulator, prompt: str,
                ) -> tuple[Any, CancelArrivesRunning]:
    emulator.latency, emulator.queue_fraction = 2.0, 0.5  # 1 s queued, then 1 s running
    service = make_service()
    fal = CancelArrivesRunning(KEY, emulator=emulator)
    service.fal = fal
    service.preflight()
    [spec] = [GenerationSpec(user_id="42", prompt=prompt)]
    generation_id = service.create(spec)
    return service.run(generation_id, spec, Deadline(0.5)), fal


def test_a_cancel_a_running_request_ignores_leaves_it_for_fix_pending(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str, cli: Cli,
    tmp_path: Path
) -> None:
    outcome, fal = race_cancel(make_service, fal_emulator, "stubborn [fault:cancel=ignored]")
    assert fal.answers == ["CANCELLATION_REQUESTED"]
    assert outcome.status == "PROCESSING"
    assert outcome.exception is not None and outcome.exception.hint is not None
    assert FIX_PENDING in outcome.exception.hint
    [row] = rows(migrated_db)
    assert row.status == "PROCESSING" and row.error is not None
    assert row.error.startswith("cancel requested after 0.5s in fal's queue")

    wait_until(fal_emulator, "COMPLETED")  # the runner went on: billed, with its images
    fixed = cli("fix-pending", "--apply", env={"DATABASE_URL": migrated_db, "FAL_KEY": KEY,
                                               "IMAGES_DIR": str(tmp_path / "images")})
    assert fixed.exit_code == 0, fixed.output
    [done] = rows(migrated_db)
    assert (done.status, done.error) == ("COMPLETED", None)
    assert all((tmp_path / "images" / key).is_file() for key in done.result_urls)
    assert fal_emulator.log.submission_count(prompt_contains="stubborn") == 1


def test_a_cancel_a_running_request_honours_ends_failed(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    """fal reports the request cancelled: its verdict, though it had begun to run."""
    outcome, _ = race_cancel(make_service, fal_emulator, "obliging")
    assert outcome.status == "FAILED"
    [row] = rows(migrated_db)
    assert row.status == "FAILED" and row.error is not None and "cancelled" in row.error
