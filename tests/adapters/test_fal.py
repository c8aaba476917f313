"""The fal adapter against the emulator over TLS, through the real fal_client: every fault fal
can show becomes one clear line (the row says why, or keeps its request id for fix-pending), a
locked account is told apart from a bad key, and a completed request's answer is fetched
without asking its status again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl.adapters.fal import FalAdapter, http_error
from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db.session import Database
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.server import LOCK_REASONS
from imagen4ctl.errors import FalAccountLocked, FalKeyRejected
from imagen4ctl.services.generation import GenerationService, GenerationSpec
from tests.commands.test_generate import KEY, rows
from tests.conftest import CliResult
from tests.reliability.test_faults import one_clear_error

Cli = Callable[..., CliResult]
MODEL = "fal-ai/imagen4/preview"
BALANCE = "fal account locked: exhausted balance — top up in fal's billing dashboard"


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
        # No status stream here (fal_stream.py): the status calls of the fallback fail.
        ("stream=refuse,status=504", "PROCESSING", "lost contact with fal",
         "status: fal answered"),
        ("stream=cut,status=drop", "PROCESSING", "lost contact with fal",
         "status: cannot reach fal"),
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
                 if e.kind in {"status", "stream", "result"}]
        assert calls == [("stream", 200), ("result", 200)]  # told COMPLETED by the stream


# --- a locked account is not a bad key ---


@pytest.mark.parametrize(("detail", "message"), [
    ("User is locked. Reason: Exhausted balance. Top up your balance at "
     "fal.ai/dashboard/billing.", BALANCE),
    ("User is locked. Reason: Exhausted balance. Top up your balance at "
     "fal.ai/dashboard/billing", BALANCE),  # issue 1147 quotes it without the full stop
    ("User is locked. Reason: TOP_UP.",
     "fal account locked: top-up required — top up in fal's billing dashboard"),
    ("User is locked. Reason: Admin lock. Please contact support@fal.ai",
     "fal account locked: admin lock — contact fal support"),
    ("User is locked. Reason: Fraud review.", "fal account locked: Fraud review."),
])
def test_a_locked_account_reads_as_one_line_with_its_reason(detail: str, message: str) -> None:
    error = http_error("submit", 403, detail, "FAL_KEY")
    assert isinstance(error, FalAccountLocked)
    assert error.message == message
    assert error.exit_code == 1 and error.readme == "fal-account-locked"
    assert error.hint is not None and "FAL_KEY" not in error.hint
    assert "a new key does not help" in error.hint


def test_the_balance_hint_points_at_the_billing_dashboard() -> None:
    error = http_error("submit", 403, f"User is locked. Reason: {LOCK_REASONS['balance']}",
                       "FAL_KEY")
    assert error.hint is not None and "https://fal.ai/dashboard/billing" in error.hint


@pytest.mark.parametrize(("status", "detail"), [
    (403, "Forbidden"), (401, "No user found for Key ID and Secret"),
    (401, "User is locked. Reason: TOP_UP."),  # only fal's 403 carries the lock
])
def test_other_refusals_still_name_the_key(status: int, detail: str) -> None:
    error = http_error("submit", status, detail, "FAL_API_KEY")
    assert isinstance(error, FalKeyRejected)
    assert error.message.startswith(f"fal rejected the key from FAL_API_KEY ({status}")


def test_the_adapter_raises_the_lock_and_still_reads_status(fal_emulator: FalEmulator) -> None:
    fal = FalAdapter(KEY)
    first = fal.submit(MODEL, {"prompt": "one before the lock"}, Deadline(10))
    fal_emulator.locked_keys = {KEY}
    with pytest.raises(FalAccountLocked) as caught:
        fal.submit(MODEL, {"prompt": "refused"}, Deadline(10))
    assert caught.value.message == BALANCE
    assert fal.status(MODEL, first.request_id, Deadline(10)).state in {
        "IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert fal_emulator.log.submission_count(status=403) == 1  # fal_client does not retry 403


def test_a_submission_carries_the_webhook_url(fal_emulator: FalEmulator) -> None:
    """`?fal_webhook=` as fal_client's `submit(webhook_url=...)` sends it: URL-encoded, so a
    URL with its own query arrives whole; without one, fal posts nothing."""
    from tests.reliability._workers import free_port

    fal_emulator.webhooks.time_scale = 1000.0  # one delivery attempt, no retry within the test
    url = f"http://127.0.0.1:{free_port()}/fal/hook?worker=a b&x=1"
    hooked = FalAdapter(KEY, webhook_url=url).submit(MODEL, {"prompt": "hooked"}, Deadline(10))
    FalAdapter(KEY).submit(MODEL, {"prompt": "not hooked"}, Deadline(10))
    deadline = time.monotonic() + 10
    while not fal_emulator.webhooks.attempts() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the unhooked request has ended too
    [attempt] = fal_emulator.webhooks.attempts()
    assert (attempt.request_id, attempt.url, attempt.status) == (hooked.request_id, url, None)
