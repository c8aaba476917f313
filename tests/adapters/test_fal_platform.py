"""fal's Platform API: the request listing fix-pending asks once fal's queue has forgotten a
request, and the account's balance check-config reads. A listing it will not give (401/403,
a wrong URL's 404) is a refusal, not "no such request". Through httpx against the emulator."""

from __future__ import annotations

import time

import pytest

from imagen4ctl.adapters.fal import FalAdapter
from imagen4ctl.adapters.fal_platform import (
    PlatformRefused,
    account_balance,
    platform_requests,
)
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator

MODEL = "fal-ai/imagen4/preview"
KEY = "emulator-key-0001"


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
