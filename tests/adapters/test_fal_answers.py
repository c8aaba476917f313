"""The fal adapter reads each answer for what it means to a paid request: a submission goes
out once (only a 429 is sent again), a result's 4xx is fal's verdict, a 404 sends the row to
the Platform API, and a cancel reports fal's answer. Against the emulator, over TLS."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from imagen4ctl.adapters.fal import FalAdapter, FalSubmissionUnknown
from imagen4ctl.adapters.fal_answers import (
    SUBMIT_RETRIES_ON_429,
    FalNotFound,
    FalResultRefused,
    resend_after,
    retry_after,
)
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.errors import FalUnavailable

KEY = "emulator-key-0001"
MODEL = "fal-ai/imagen4/preview"


@pytest.fixture
def fal(fal_emulator: FalEmulator) -> FalAdapter:
    fal_emulator.latency = 0.05
    return FalAdapter(KEY)


@pytest.mark.parametrize("fault", ["queued:ingress502", "queued:ingress504", "queued:drop",
                                   "queued:500", "queued:malformed", "ingress503", "503",
                                   "408", "409"])
def test_an_answer_that_may_follow_a_queued_request_is_never_sent_again(
    fal: FalAdapter, fal_emulator: FalEmulator, fault: str
) -> None:
    with pytest.raises(FalSubmissionUnknown) as raised:
        fal.submit(MODEL, {"prompt": f"once [fault:submit={fault}]"}, Deadline(10.0))
    assert "fix-pending" in (raised.value.hint or "")
    assert fal_emulator.log.submission_count(prompt_contains="once") == 1


def test_an_nginx_answer_is_named_as_the_ingress(fal: FalAdapter) -> None:
    with pytest.raises(FalSubmissionUnknown, match="fal's ingress answered the submission "
                       "with 502; fal may have queued it"):
        fal.submit(MODEL, {"prompt": "x [fault:submit=queued:ingress502]"}, Deadline(10.0))


def test_a_429_is_sent_again_until_fal_queues_it(
    fal: FalAdapter, fal_emulator: FalEmulator
) -> None:
    submitted = fal.submit(MODEL, {"prompt": "busy [fault:submit=429x2]"}, Deadline(30.0))
    assert submitted.request_id
    assert [e.status for e in fal_emulator.log.submissions(prompt_contains="busy")] == \
        [429, 429, 200]
    assert fal_emulator.log.queued_count(prompt_contains="busy") == 1


def test_a_lasting_429_ends_as_a_refusal_after_a_few_resends(
    fal: FalAdapter, fal_emulator: FalEmulator
) -> None:
    with pytest.raises(FalUnavailable, match=r"rate limiting this key \(429"):
        fal.submit(MODEL, {"prompt": "full [fault:submit=429]"}, Deadline(60.0))
    assert fal_emulator.log.submission_count(prompt_contains="full") == 1 + SUBMIT_RETRIES_ON_429
    assert fal_emulator.log.queued_count() == 0


def test_a_429_is_not_sent_again_past_the_deadline(
    fal: FalAdapter, fal_emulator: FalEmulator
) -> None:
    started = time.monotonic()
    with pytest.raises(FalUnavailable, match="429"):
        fal.submit(MODEL, {"prompt": "short [fault:submit=429]"}, Deadline(1.2))
    assert time.monotonic() - started < 1.2
    assert fal_emulator.log.submission_count(prompt_contains="short") == 2  # 0.5 s, then 1 s


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after("2", 0.5) == 2.0
    assert retry_after(" 0.25 ", 0.5) == 0.25
    assert retry_after("Thu, 01 Jan 2026 12:00:07 GMT", 0.5, now=now) == 7.0
    assert retry_after("Thu, 01 Jan 2026 11:00:00 GMT", 0.5, now=now) == 0.0
    assert retry_after(None, 0.5) == retry_after("soon", 0.5) == 0.5


def test_a_429_waits_as_long_as_fal_says() -> None:
    told = httpx.Response(429, headers={"Retry-After": "3"})
    assert resend_after(told, 0, remaining=10.0) == 3.0
    assert resend_after(told, 0, remaining=2.0) is None  # the deadline comes first
    assert resend_after(httpx.Response(429), 1, remaining=10.0) == 1.0  # backoff, doubled
    assert resend_after(told, SUBMIT_RETRIES_ON_429, remaining=10.0) is None
    assert resend_after(httpx.Response(503, headers={"Retry-After": "1"}), 0, 10.0) is None


def wait_completed(fal: FalAdapter, request_id: str) -> None:
    deadline = time.monotonic() + 10
    while fal.status(MODEL, request_id, Deadline(5.0)).state != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize(("fault", "kind"), [("422", FalResultRefused),
                                             ("400", FalResultRefused),
                                             ("404", FalNotFound),
                                             ("500", FalUnavailable),
                                             ("drop", FalUnavailable)])
def test_a_result_error_says_whether_it_is_fal_s_verdict(
    fal: FalAdapter, fault: str, kind: type[Exception]
) -> None:
    request_id = fal.submit(MODEL, {"prompt": f"r [fault:result={fault}]"},
                            Deadline(10.0)).request_id
    wait_completed(fal, request_id)
    with pytest.raises(kind):
        fal.result(MODEL, request_id, Deadline(10.0))


def test_a_result_without_images_is_fal_s_verdict(fal: FalAdapter) -> None:
    request_id = fal.submit(MODEL, {"prompt": "r [fault:run=noimages]"}, Deadline(10.0)).request_id
    wait_completed(fal, request_id)
    assert fal.result(MODEL, request_id, Deadline(10.0)).images == ()


def test_a_cancel_reports_fal_s_answer(fal: FalAdapter, fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 5.0
    queued = fal.submit(MODEL, {"prompt": "c"}, Deadline(10.0)).request_id
    assert fal.cancel(MODEL, queued, Deadline(5.0)) == "CANCELLATION_REQUESTED"
    assert fal.cancel(MODEL, queued, Deadline(5.0)) == "ALREADY_COMPLETED"
    assert fal.cancel(MODEL, "no-such-request", Deadline(5.0)) == "NOT_FOUND"
