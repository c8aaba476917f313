"""check-config's `fal_api` reads the account's balance from fal's Platform API: free, and
honest about what it cannot see (a lock with money on the account, a key without billing
permission)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from imagen4ctl.emulator import FalEmulator
from tests.conftest import CANARY, CliResult, assert_no_secret

Cli = Callable[..., CliResult]
KEY = "emulator-key-0001"


def fal_api(cli: Cli, key: str = KEY) -> dict[str, Any]:
    result = cli("check-config", "--json", env={"FAL_KEY": key})
    data = result.json()
    assert isinstance(data, dict)
    [check] = [c for c in data["checks"] if c["name"] == "fal_api"]
    return check


@pytest.mark.parametrize(("balance", "shown"), [(0.0, "0"), (-0.18, "-0.18")])
def test_no_balance_is_a_warning_that_submissions_will_be_refused(
    cli: Cli, fal_emulator: FalEmulator, balance: float, shown: str
) -> None:
    fal_emulator.balance = balance
    check = fal_api(cli)
    assert check["status"] == "warn"
    assert check["message"] == (
        f"{fal_emulator.host}:{fal_emulator.port} accepted the key from FAL_KEY, but the fal "
        f"account balance is {shown} USD: submissions will be refused (account locked)")
    assert "fal.ai/dashboard/billing" in check["hint"]
    assert fal_emulator.log.submission_count() == 0  # no paid call, ever


def test_a_positive_balance_is_ok_and_says_a_lock_is_not_visible(
    cli: Cli, fal_emulator: FalEmulator
) -> None:
    fal_emulator.balance = 12.5
    fal_emulator.locked_keys = {KEY}  # locked with money on the account (fal-ai/fal #1147)
    check = fal_api(cli)
    assert check["status"] == "ok"
    assert check["message"].endswith("; balance 12.5 USD (a lock is not visible to this probe)")
    assert fal_emulator.log.submission_count() == 0


@pytest.mark.parametrize(("fault", "code"), [(None, 403), ("platform=401", 401)])
def test_a_key_without_billing_permission_says_what_it_could_not_check(
    cli: Cli, fal_emulator: FalEmulator, fault: str | None, code: int
) -> None:
    if fault is None:
        fal_emulator.billing_refused = True
    else:
        fal_emulator.faults = fault
    check = fal_api(cli)
    assert check["status"] == "ok"  # the key itself was accepted by fal's queue
    assert (f"; could not check the account's state: the key has no billing permission "
            f"({code}: ") in check["message"]


def test_a_wrong_platform_url_says_what_it_could_not_check(
    cli: Cli, fal_emulator: FalEmulator
) -> None:
    result = cli("check-config", "--json",
                 env={"FAL_KEY": KEY, "FAL_PLATFORM_API_URL": f"{fal_emulator.base_url}/v0"})
    [check] = [c for c in result.json()["checks"] if c["name"] == "fal_api"]  # type: ignore[index]
    assert check["status"] == "ok"
    assert "could not check the account's state: fal's Platform API answered 404" in \
        check["message"]


def test_the_human_output_shows_the_warning_and_its_hint(
    cli: Cli, fal_emulator: FalEmulator
) -> None:
    fal_emulator.balance = 0
    result = cli("check-config", env={"FAL_KEY": KEY})
    assert "! fal_api:" in result.stdout
    assert "submissions will be refused (account locked)" in result.stdout
    assert "hint: Top up at https://fal.ai/dashboard/billing" in result.stdout


def test_the_key_never_shows(cli: Cli, fal_emulator: FalEmulator) -> None:
    for knobs in ({"balance": -1.0}, {"billing_refused": True}):
        for name, value in knobs.items():
            setattr(fal_emulator, name, value)
        for args in (("check-config",), ("check-config", "--json")):
            result = cli(*args, env={"FAL_KEY": CANARY})
            assert_no_secret(result.output)
