"""The emulator's fal account: a locked key (status works, submit 403), the balance route, and
which Platform API listing covers which endpoints. Over TLS, with httpx and fal_client."""

from __future__ import annotations

import shlex
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.server import LOCK_REASONS, LOCKED_MESSAGE
from tests.conftest import interruptible
from tests.emulator._helpers import MODEL, auth, wait_for


def submit(emulator: FalEmulator, key: str) -> httpx.Response:
    return httpx.post(f"{emulator.base_url}/{MODEL}", json={"prompt": "a lighthouse"},
                      headers=auth(key))


def test_a_locked_key_is_refused_submissions_but_reads_its_requests(
    fal_emulator: FalEmulator,
) -> None:
    accepted = submit(fal_emulator, "spender")
    assert accepted.status_code == 200
    request_id = accepted.json()["request_id"]
    fal_emulator.locked_keys = {"spender"}  # "exactly ONE generation succeeds" (issue 1163)

    refused = submit(fal_emulator, "spender")
    assert refused.status_code == 403
    assert refused.json() == {"detail": LOCKED_MESSAGE}
    assert LOCKED_MESSAGE == ("User is locked. Reason: Exhausted balance. Top up your balance "
                              "at fal.ai/dashboard/billing.")
    status = httpx.get(f"{fal_emulator.base_url}/fal-ai/imagen4/requests/{request_id}/status",
                       headers=auth("spender"))
    assert status.status_code in {200, 202}
    assert [e.status for e in fal_emulator.log.entries("submit")] == [200, 403]


@pytest.mark.parametrize("reason", sorted(LOCK_REASONS))
def test_the_lock_reason_is_a_knob(fal_emulator: FalEmulator, reason: str) -> None:
    fal_emulator.locked_keys = {"k"}
    fal_emulator.lock_reason = LOCK_REASONS[reason]
    refused = submit(fal_emulator, "k")
    assert refused.json()["detail"] == f"User is locked. Reason: {LOCK_REASONS[reason]}"


def test_a_forbidden_key_is_refused_everything_without_a_lock_message(
    fal_emulator: FalEmulator,
) -> None:
    fal_emulator.forbidden_keys = {"k"}
    refused = submit(fal_emulator, "k")
    assert refused.status_code == 403
    assert "locked" not in refused.json()["detail"]
    status = httpx.get(f"{fal_emulator.base_url}/fal-ai/imagen4/requests/x/status",
                       headers=auth("k"))
    assert status.status_code == 403


def test_billing_reports_the_balance_only_when_expanded(fal_emulator: FalEmulator) -> None:
    url = f"{fal_emulator.platform_url}/account/billing"
    fal_emulator.balance = -0.18  # what issue 1147's locked account showed
    plain = httpx.get(url, headers=auth("k"))
    assert plain.status_code == 200 and "credits" not in plain.json()
    expanded = httpx.get(url, params={"expand": "credits"}, headers=auth("k"))
    assert expanded.json()["credits"] == {"current_balance": -0.18, "currency": "USD"}
    fal_emulator.locked_keys = {"locked"}
    assert httpx.get(url, headers=auth("locked")).status_code == 200  # not a billable call
    fal_emulator.billing_refused = True
    refused = httpx.get(url, params={"expand": "credits"}, headers=auth("k"))
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "authorization_error"
    assert httpx.get(url).status_code == 401
    assert not fal_emulator.log.entries("submit")


def test_models_listing_covers_any_endpoint_serverless_only_owned(
    fal_emulator: FalEmulator,
) -> None:
    accepted = submit(fal_emulator, "k")
    request_id = accepted.json()["request_id"]
    wait_for(fal_emulator, request_id, "COMPLETED")
    query = {"endpoint_id": MODEL, "request_id": request_id}
    models = httpx.get(f"{fal_emulator.platform_url}/models/requests/by-endpoint",
                       params=query, headers=auth("k"))
    assert [i["request_id"] for i in models.json()["items"]] == [request_id]
    serverless = f"{fal_emulator.platform_url}/serverless/requests/by-endpoint"
    assert httpx.get(serverless, params=query, headers=auth("k")).status_code == 403
    fal_emulator.owned_namespaces = {"fal-ai"}
    owned = httpx.get(serverless, params=query, headers=auth("k"))
    assert [i["request_id"] for i in owned.json()["items"]] == [request_id]


def test_an_unknown_request_is_an_empty_listing_and_a_wrong_route_is_404(
    fal_emulator: FalEmulator,
) -> None:
    listing = httpx.get(f"{fal_emulator.platform_url}/models/requests/by-endpoint",
                        params={"endpoint_id": MODEL, "request_id": "no-such-id"},
                        headers=auth("k"))
    assert listing.status_code == 200 and listing.json()["items"] == []
    wrong = httpx.get(f"{fal_emulator.platform_url}/model/requests/by-endpoint",
                      params={"endpoint_id": MODEL}, headers=auth("k"))
    assert wrong.status_code == 404


def test_a_locked_key_is_known_even_when_keys_are_listed(fal_emulator: FalEmulator) -> None:
    fal_emulator.accepted_keys = {"good"}
    fal_emulator.locked_keys = {"locked"}
    assert submit(fal_emulator, "locked").status_code == 403
    assert submit(fal_emulator, "stranger").status_code == 401
    status = httpx.get(f"{fal_emulator.base_url}/fal-ai/imagen4/requests/x/status",
                       headers=auth("locked"))
    assert status.status_code == 404  # past auth: the id is unknown, the key is not


def test_the_command_plays_a_locked_account(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "imagen4ctl.commands.emulator", "--key", "good",
         "--locked-key", "locked", "--balance", "-0.5", "--cert-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(4)]
        env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines)
        tls = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
        with httpx.Client(verify=tls, timeout=10) as client:
            base = f"https://{env['FAL_QUEUE_RUN_HOST']}"
            refused = client.post(f"{base}/{MODEL}", json={"prompt": "x"}, headers=auth("locked"))
            assert (refused.status_code, refused.json()["detail"]) == (403, LOCKED_MESSAGE)
            billing = client.get(f"{env['FAL_PLATFORM_API_URL']}/account/billing",
                                 params={"expand": "credits"}, headers=auth("locked"))
            assert billing.json()["credits"]["current_balance"] == -0.5
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)
