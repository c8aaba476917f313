"""The fal adapter against the emulator over TLS, through the real fal_client: every fault fal
can show becomes one clear line (the row says why, or keeps its request id for fix-pending), and
a completed request's answer is fetched without asking its status again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl.adapters.fal import FalAdapter
from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db.session import Database
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.services.generation import GenerationService, GenerationSpec
from tests.commands.test_generate import KEY, rows
from tests.conftest import CliResult
from tests.reliability.test_faults import one_clear_error

Cli = Callable[..., CliResult]
MODEL = "fal-ai/imagen4/preview"


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42"}


@pytest.fixture
def service(migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path
            ) -> Iterator[GenerationService]:
    service = GenerationService(
        Database(migrated_db), LocalStorage(tmp_path / "images"), FalAdapter(KEY), model=MODEL,
        prefix="generations/", max_image_bytes=10 * 1024 * 1024,
        trusted_hosts=frozenset({fal_emulator.host}))
    yield service
    service.database.dispose()


def specs(*prompts: str) -> list[GenerationSpec]:
    return [GenerationSpec(user_id="42", prompt=prompt) for prompt in prompts]


@pytest.mark.parametrize(
    ("directive", "status", "reason", "row_error"),
    [
        ("submit=404", "FAILED", "fal has no such endpoint", "no such endpoint"),
        ("submit=422", "FAILED", "fal refused the arguments", "refused the arguments"),
        ("submit=500", "PENDING", "fal answered the submission with 500", "may have queued"),
        ("submit=503", "PENDING", "fal answered the submission with 503", "may have queued"),
        ("submit=429", "FAILED", "rate limiting this key (429", "rate limiting"),
        ("submit=malformed", "PENDING", "submission state unknown", "submission state unknown"),
        ("submit=drop", "PENDING", "submission state unknown", "submission state unknown"),
        ("status=504", "PROCESSING", "lost contact with fal", "status: fal answered"),
        ("status=drop", "PROCESSING", "lost contact with fal", "status: cannot reach fal"),
        ("result=malformed", "PROCESSING", "malformed answer to the result", "result: fal"),
        ("run=error:request_timeout", "FAILED", "failed at fal", "fal: Request timed out"),
        ("run=noimages", "FAILED", "fal returned no images", "no images"),
        ("file=404", "PROCESSING", "the image URL answered 404", "download: the image"),
        ("file=drop", "PROCESSING", "cannot download the image", "download: cannot"),
        ("file=notimage", "FAILED", "not a PNG, JPEG or WebP image", "not a PNG"),
        ("file=large:60MB", "FAILED", "IMAGEN4_MAX_IMAGE_BYTES", "cap"),
    ],
)
def test_fal_fault_matrix(cli: Cli, env: dict[str, str], migrated_db: str, s3_bucket: Any,
                          directive: str, status: str, reason: str,
                          row_error: str | None) -> None:
    result = cli("generate", f"fault {directive} [fault:{directive}]", "--timeout", "4",
                 env=env)
    assert reason in one_clear_error(result)
    [row] = rows(migrated_db)
    assert row.status == status
    if row_error is not None:
        assert row.error is not None and row_error in row.error
    if status == "PROCESSING":  # left for fix-pending, with its request id
        assert row.fal_request_id
    assert list(s3_bucket.storage.list("generations/")) == []


@pytest.mark.parametrize(("knob", "code"), [("accepted_keys", "401"), ("forbidden_keys", "403")])
def test_key_refused(cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: Any,
                     knob: str, code: str) -> None:
    setattr(fal_emulator, knob, {"not-this-one"} if knob == "accepted_keys" else {KEY})
    line = one_clear_error(cli("generate", "refused", env=env))
    assert f"fal rejected the key from FAL_KEY ({code}" in line
    assert rows(migrated_db)[0].status == "FAILED"


def test_fal_unreachable_fails_fast(cli: Cli, env: dict[str, str], migrated_db: str,
                                    fal_emulator: Any) -> None:
    fal_emulator.faults = "submit=ingress503"  # what a dead upstream behind a proxy looks like
    started = time.monotonic()
    line = one_clear_error(cli("generate", "gone", "--timeout", "3", env=env))
    assert time.monotonic() - started < 15
    assert "ingress answered the submission with 503" in line
    [row] = rows(migrated_db)
    assert (row.status, row.fal_request_id) == ("PENDING", None)  # nothing sent again
    assert fal_emulator.log.submission_count() == 1


def test_a_completed_request_is_not_asked_its_status_again_for_its_result(
    service: GenerationService, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency = 0.2
    outcomes = service.run_batch(specs("asked once", "asked once too"), concurrency=2,
                                 timeout=30)
    assert [o.status for o in outcomes] == ["COMPLETED"] * 2
    for outcome in outcomes:
        assert outcome.fal_request_id is not None
        calls = [(e.kind, e.status) for e in fal_emulator.log.for_request(outcome.fal_request_id)
                 if e.kind in {"status", "result"}]
        assert calls[-2:] == [("status", 200), ("result", 200)]
        assert calls.count(("status", 200)) == 1
