"""The emulator's webhooks: a request submitted with `fal_webhook` (fal_client's own
`submit(..., webhook_url=...)`) is POSTed there when it ends, signed with a key its JWKS
publishes, and delivered again, like fal, while the receiver does not take it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import fal_client
import httpx
import pytest

from imagen4ctl.adapters.fal_webhook import WebhookRejected, WebhookVerifier
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.server import CANCELLED_MESSAGE
from imagen4ctl.emulator.webhooks import JWKS_PATH, PAYLOAD_ERROR, RETRY_DELAYS
from tests.emulator._helpers import MODEL, Receiver, receiving
from tests.reliability._workers import free_port


@pytest.fixture
def receiver(fal_emulator: FalEmulator) -> Iterator[Receiver]:
    with receiving(fal_emulator) as found:
        fal_emulator.webhooks.time_scale = 0.001
        yield found


def submit(client: fal_client.SyncClient, url: str, prompt: str = "a lighthouse",
           **arguments: Any) -> str:
    handle = client.submit(MODEL, arguments={"prompt": prompt, **arguments}, webhook_url=url)
    return str(handle.request_id)


def verifier(emulator: FalEmulator) -> WebhookVerifier:
    return WebhookVerifier(emulator.base_url + JWKS_PATH)


def test_a_finished_request_is_posted_signed_to_its_webhook(
        fal_sync_client: fal_client.SyncClient, receiver: Receiver) -> None:
    request_id = submit(fal_sync_client, receiver.url)
    [delivery] = receiver.wait_for(1)
    assert delivery.state == "COMPLETED"  # posted when it ended, not before
    verifier(receiver.emulator).verify(delivery.headers, delivery.body)
    assert delivery.headers["X-Fal-Webhook-Request-Id"] == request_id
    body = delivery.json()
    assert body["request_id"] == body["gateway_request_id"] == request_id
    assert body["status"] == "OK" and "error" not in body
    assert body["payload"] == fal_sync_client.get_handle(MODEL, request_id).get()
    time.sleep(0.2)
    assert len(receiver.got) == 1  # taken at once: not delivered again


def test_a_cookie_a_receiver_sets_is_never_sent_back(
        fal_sync_client: fal_client.SyncClient, receiver: Receiver) -> None:
    receiver.cookie = "session=receiver-state; Path=/"
    submit(fal_sync_client, receiver.url, prompt="first")
    receiver.wait_for(1)
    submit(fal_sync_client, receiver.url, prompt="second")
    deliveries = receiver.wait_for(2)
    assert [{k.lower() for k in d.headers} & {"cookie"} for d in deliveries] == [set(), set()]


def test_a_model_error_is_posted_as_error(fal_sync_client: fal_client.SyncClient,
                                          receiver: Receiver) -> None:
    submit(fal_sync_client, receiver.url, prompt="[fault:run=error:internal_error] broken")
    submit(fal_sync_client, receiver.url, num_images=99)
    bodies = sorted((d.json() for d in receiver.wait_for(2)), key=lambda b: b["error"])
    assert [b["status"] for b in bodies] == ["ERROR", "ERROR"]
    assert bodies[0]["error"] == "Invalid status code: 422"  # fal's own example's shape
    assert bodies[0]["payload"]["detail"][0]["loc"] == ["body", "num_images"]
    assert bodies[1]["error"] == "Invalid status code: 500"
    assert bodies[1]["payload"]["error_type"] == "internal_error"


def test_a_cancel_ends_the_request_and_posts_it_at_once(
        fal_sync_client: fal_client.SyncClient, receiver: Receiver) -> None:
    request_id = submit(fal_sync_client, receiver.url, prompt="[fault:run=hang] forever")
    time.sleep(0.5)
    assert receiver.got == []  # a request that never ends is never posted
    fal_sync_client.get_handle(MODEL, request_id).cancel()
    [delivery] = receiver.wait_for(1)
    body = delivery.json()
    assert (body["status"], body["error"]) == ("ERROR", "Invalid status code: 400")
    assert body["payload"]["detail"] == CANCELLED_MESSAGE


def test_a_refused_delivery_is_delivered_again(fal_sync_client: fal_client.SyncClient,
                                               receiver: Receiver) -> None:
    receiver.answers = [500, 404, 200]
    request_id = submit(fal_sync_client, receiver.url)
    got = receiver.wait_for(3)
    assert len({d.body for d in got}) == 1  # the same body every time, signed anew
    for delivery in got:
        verifier(receiver.emulator).verify(delivery.headers, delivery.body)
    time.sleep(0.3)
    attempts = receiver.emulator.webhooks.attempts(request_id)
    assert [(a.attempt, a.status) for a in attempts] == [(0, 500), (1, 404), (2, 200)]


def test_fal_retries_ten_times_in_two_hours_then_gives_up(
        fal_sync_client: fal_client.SyncClient, receiver: Receiver) -> None:
    assert len(RETRY_DELAYS) == 10 and 7200 <= sum(RETRY_DELAYS) < 7600
    receiver.answers = [503]
    receiver.emulator.webhooks.time_scale = 0.0002  # two hours in under two seconds
    request_id = submit(fal_sync_client, receiver.url)
    receiver.wait_for(11)
    time.sleep(1.0)
    attempts = receiver.emulator.webhooks.attempts(request_id)
    assert [a.attempt for a in attempts] == list(range(11))
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[-1] > gaps[0]  # later retries wait longer


def test_a_receiver_out_of_reach_is_tried_again(fal_sync_client: fal_client.SyncClient,
                                                receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{free_port()}/gone"
    request_id = submit(fal_sync_client, url)
    deadline = time.monotonic() + 10
    while len(receiver.emulator.webhooks.attempts(request_id)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert {a.status for a in receiver.emulator.webhooks.attempts(request_id)} == {None}


def test_drop_loses_every_delivery(fal_sync_client: fal_client.SyncClient,
                                   receiver: Receiver) -> None:
    receiver.emulator.webhooks.drop = True
    request_id = submit(fal_sync_client, receiver.url)
    deadline = time.monotonic() + 10
    while len(receiver.emulator.webhooks.attempts(request_id)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert receiver.got == []
    assert all(a.dropped for a in receiver.emulator.webhooks.attempts(request_id))


@pytest.mark.parametrize(("forge", "reason"), [
    ("signature", "signature"), ("body", "signature"), ("key", "signature"),
    ("stale", "stale"), ("unsigned", "unsigned"),
])
def test_forged_deliveries_fail_verification(fal_sync_client: fal_client.SyncClient,
                                             receiver: Receiver, forge: str,
                                             reason: str) -> None:
    receiver.emulator.webhooks.forge = forge
    receiver.answers = [401, 200]  # the receiver refuses it; the next one is taken
    submit(fal_sync_client, receiver.url)
    delivery = receiver.wait_for(1)[0]
    with pytest.raises(WebhookRejected, match=reason):
        verifier(receiver.emulator).verify(delivery.headers, delivery.body)
    deadline = time.monotonic() + 5
    while not receiver.emulator.webhooks.attempts():  # noted once the answer is in
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert receiver.emulator.webhooks.attempts()[0].forged == forge


def test_payload_error_sends_no_payload(fal_sync_client: fal_client.SyncClient,
                                        receiver: Receiver) -> None:
    receiver.emulator.webhooks.payload_error = True
    submit(fal_sync_client, receiver.url)
    body = receiver.wait_for(1)[0].json()
    assert (body["status"], body["payload"], body["payload_error"]) == (
        "OK", None, PAYLOAD_ERROR)


def test_the_jwks_lists_every_signing_key(fal_emulator: FalEmulator) -> None:
    def keys() -> list[dict[str, str]]:
        answer = httpx.get(fal_emulator.base_url + JWKS_PATH, timeout=10)
        assert answer.status_code == 200
        return list(answer.json()["keys"])

    [first] = keys()
    assert (first["kty"], first["crv"]) == ("OKP", "Ed25519") and len(first["x"]) == 43
    kid = fal_emulator.webhooks.rotate_key()
    assert [key["kid"] for key in keys()] == [first["kid"], kid]
    fal_emulator.restore_defaults()
    assert keys() == [first]


def test_reset_forgets_pending_deliveries(fal_sync_client: fal_client.SyncClient,
                                          receiver: Receiver) -> None:
    receiver.emulator.latency = 0.5
    submit(fal_sync_client, receiver.url)
    receiver.emulator.reset()
    time.sleep(0.8)
    assert receiver.got == []


def test_the_knobs_go_back_to_their_defaults(fal_emulator: FalEmulator) -> None:
    hooks = fal_emulator.webhooks
    hooks.time_scale, hooks.drop, hooks.forge, hooks.payload_error = 0.5, True, "stale", True
    fal_emulator.restore_defaults()
    assert (hooks.time_scale, hooks.drop, hooks.forge, hooks.payload_error) == (
        1.0, False, None, False)


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "not a url"])
def test_a_webhook_that_is_no_http_url_is_refused(fal_sync_client: fal_client.SyncClient,
                                                  url: str) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        fal_sync_client.submit(MODEL, arguments={"prompt": "x"}, webhook_url=url)
    assert caught.value.status_code == 422


