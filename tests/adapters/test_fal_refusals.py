"""fal's refusals told apart: a locked account is not a bad key, and a Platform API that will
not answer (401/403, a wrong URL's 404) is not "no such request". Through the real
fal_client and httpx against the emulator."""

from __future__ import annotations

import time

import pytest

from imagen4ctl.adapters.fal import FalAdapter, http_error
from imagen4ctl.adapters.fal_platform import (
    PlatformRefused,
    account_balance,
    platform_requests,
)
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.server import LOCK_REASONS
from imagen4ctl.errors import FalAccountLocked, FalKeyRejected

MODEL = "fal-ai/imagen4/preview"
KEY = "emulator-key-0001"

BALANCE = "fal account locked: exhausted balance — top up in fal's billing dashboard"


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


def completed_request(fal_emulator: FalEmulator) -> str:
    request_id = FalAdapter(KEY).submit(MODEL, {"prompt": "listed"}, Deadline(10)).request_id
    deadline = time.monotonic() + 10
    while fal_emulator.state(request_id) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.05)
    return request_id


def test_the_listing_finds_a_public_endpoints_request_and_nothing_is_an_empty_list(
    fal_emulator: FalEmulator,
) -> None:
    request_id = completed_request(fal_emulator)
    found = list(platform_requests(fal_emulator.platform_url, KEY, MODEL, Deadline(10),
                                   request_id=request_id))
    assert [r.request_id for r in found] == [request_id]
    assert fal_emulator.log.entries("platform")[-1].path == "/v1/models/requests/by-endpoint"
    assert list(platform_requests(fal_emulator.platform_url, KEY, MODEL, Deadline(10),
                                  request_id="no-such-request")) == []


@pytest.mark.parametrize("code", [401, 403])
def test_a_refused_listing_is_a_refusal_not_an_answer(fal_emulator: FalEmulator,
                                                      code: int) -> None:
    fal_emulator.faults = f"platform={code}"
    with pytest.raises(PlatformRefused) as caught:
        list(platform_requests(fal_emulator.platform_url, KEY, MODEL, Deadline(10),
                               request_id="any"))
    assert caught.value.message.startswith(
        f"fal's Platform API refused to list requests of {MODEL} ({code}: ")
    assert "owns" not in caught.value.message  # that describes serverless/, not models/


def test_a_wrong_platform_url_is_a_refusal_not_no_such_request(
    fal_emulator: FalEmulator,
) -> None:
    wrong = f"{fal_emulator.base_url}/v0"
    with pytest.raises(PlatformRefused) as caught:
        list(platform_requests(wrong, KEY, MODEL, Deadline(10), request_id="any"))
    assert caught.value.message == (
        f"fal's Platform API has no request listing at {wrong}/models/requests/by-endpoint "
        "(404)")
    assert caught.value.hint is not None and "FAL_PLATFORM_API_URL" in caught.value.hint


def test_the_balance_is_read_without_paying(fal_emulator: FalEmulator) -> None:
    fal_emulator.balance = 12.5
    found = account_balance(fal_emulator.platform_url, KEY, timeout=5)
    assert (found.balance, found.currency) == (12.5, "USD")
    entry = fal_emulator.log.entries("platform")[-1]
    assert (entry.method, entry.path) == ("GET", "/v1/account/billing")
    assert fal_emulator.log.submission_count() == 0


@pytest.mark.parametrize(("knob", "code"), [("billing_refused", 403), ("faults", 401)])
def test_a_key_without_billing_permission_is_refused(fal_emulator: FalEmulator, knob: str,
                                                     code: int) -> None:
    if knob == "faults":
        fal_emulator.faults = "platform=401"
    else:
        fal_emulator.billing_refused = True
    with pytest.raises(PlatformRefused) as caught:
        account_balance(fal_emulator.platform_url, KEY, timeout=5)
    assert caught.value.message.startswith(f"the key has no billing permission ({code}: ")
