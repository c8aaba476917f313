"""fal's webhook deliveries are verified before anything in them is read: the signature
against the JWKS (the emulator's own, over TLS), the timestamp, the body's hash, the size."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagen4ctl.adapters.fal_webhook import (
    MAX_BODY,
    SIGNED_HEADERS,
    WebhookMalformed,
    WebhookRejected,
    WebhookUnverifiable,
    WebhookVerifier,
    parse_delivery,
    probe_jwks,
)
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.webhooks import JWKS_PATH, PAYLOAD_ERROR
from tests.reliability._workers import free_port

REQUEST_ID = "123e4567-e89b-12d3-a456-426614174000"
BODY = json.dumps({
    "request_id": REQUEST_ID, "gateway_request_id": REQUEST_ID, "status": "OK",
    "payload": {"images": [{"url": "https://url.to/image.png", "content_type": "image/png",
                            "file_name": "image.png", "file_size": 1824075, "width": 1024,
                            "height": 1024}], "seed": 196619188014358660}}).encode()


def verifier(emulator: FalEmulator, **kwargs: float) -> WebhookVerifier:
    return WebhookVerifier(emulator.base_url + JWKS_PATH, **kwargs)


def jwks_fetches(emulator: FalEmulator) -> int:
    return sum(1 for entry in emulator.log.entries() if entry.path == JWKS_PATH)


def test_a_delivery_signed_with_a_published_key_passes(fal_emulator: FalEmulator) -> None:
    check = verifier(fal_emulator)
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY)
    check.verify(headers, BODY)
    check.verify({name.lower(): value for name, value in headers.items()}, BODY)
    assert check.fetches == 1 == jwks_fetches(fal_emulator)  # the keys are kept


@pytest.mark.parametrize("seconds", [-299, 299])
def test_a_clock_a_little_off_is_tolerated(fal_emulator: FalEmulator, seconds: int) -> None:
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY,
                                            timestamp=int(time.time()) + seconds)
    verifier(fal_emulator).verify(headers, BODY)


def _rejected(check: WebhookVerifier, headers: dict[str, str], body: bytes) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        check.verify(headers, body)
    return caught.value


def test_a_tampered_body_is_refused(fal_emulator: FalEmulator) -> None:
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY)
    tampered = BODY.replace(b'"OK"', b'"ERROR"')
    error = _rejected(verifier(fal_emulator), headers, tampered)
    assert error.status == 401 and "signature" in error.message


def test_a_forged_signature_is_refused(fal_emulator: FalEmulator) -> None:
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY)
    headers["X-Fal-Webhook-Signature"] = "ab" * 64
    assert _rejected(verifier(fal_emulator), headers, BODY).status == 401
    headers["X-Fal-Webhook-Signature"] = "not hex at all"
    assert "not hex" in _rejected(verifier(fal_emulator), headers, BODY).message


def test_a_signed_header_changed_breaks_the_signature(fal_emulator: FalEmulator) -> None:
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY)
    headers["X-Fal-Webhook-User-Id"] = "someone-else"
    assert _rejected(verifier(fal_emulator), headers, BODY).status == 401


@pytest.mark.parametrize("seconds", [-301, 301, -86400])
def test_a_stale_or_future_delivery_is_refused(fal_emulator: FalEmulator,
                                               seconds: int) -> None:
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY,
                                            timestamp=int(time.time()) + seconds)
    error = _rejected(verifier(fal_emulator), headers, BODY)
    assert error.status == 401 and "stale" in error.message
    assert jwks_fetches(fal_emulator) == 0  # refused before any key was needed


def test_a_timestamp_that_is_no_number_is_refused(fal_emulator: FalEmulator) -> None:
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY)
    for bad in ("soon", "nan", "inf"):
        headers["X-Fal-Webhook-Timestamp"] = bad
        assert _rejected(verifier(fal_emulator), headers, BODY).status == 401


@pytest.mark.parametrize("missing", SIGNED_HEADERS)
def test_an_unsigned_delivery_is_refused(fal_emulator: FalEmulator, missing: str) -> None:
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY)
    del headers[missing]
    error = _rejected(verifier(fal_emulator), headers, BODY)
    assert error.status == 401 and error.message == f"unsigned delivery: no {missing}"
    headers[missing] = "  "
    assert _rejected(verifier(fal_emulator), headers, BODY).status == 401


def test_no_headers_at_all(fal_emulator: FalEmulator) -> None:
    error = _rejected(verifier(fal_emulator), {}, BODY)
    assert error.message == "unsigned delivery: no " + ", ".join(SIGNED_HEADERS)


def test_an_oversized_delivery_is_refused_before_anything_else(
        fal_emulator: FalEmulator) -> None:
    body = b" " * (MAX_BODY + 1)
    error = _rejected(verifier(fal_emulator), fal_emulator.webhooks.headers(REQUEST_ID, body),
                      body)
    assert error.status == 413
    assert jwks_fetches(fal_emulator) == 0
    exactly = b" " * MAX_BODY  # the limit itself passes
    verifier(fal_emulator).verify(fal_emulator.webhooks.headers(REQUEST_ID, exactly), exactly)


def test_an_unknown_key_refetches_the_keys_once(fal_emulator: FalEmulator) -> None:
    check = verifier(fal_emulator)
    check.verify(fal_emulator.webhooks.headers(REQUEST_ID, BODY), BODY)
    stranger = Ed25519PrivateKey.generate()
    forged = fal_emulator.webhooks.headers(REQUEST_ID, BODY, key=stranger)
    assert _rejected(check, forged, BODY).status == 401
    assert check.fetches == 2 == jwks_fetches(fal_emulator)  # looked for a rotated key once
    for _ in range(5):  # a flood of them: no more fetches until REFETCH_EVERY has passed
        assert _rejected(check, forged, BODY).status == 401
    assert check.fetches == 2 == jwks_fetches(fal_emulator)


def test_a_rotated_key_is_found_by_the_refetch(fal_emulator: FalEmulator) -> None:
    check = verifier(fal_emulator, refetch_every=0.0)
    check.verify(fal_emulator.webhooks.headers(REQUEST_ID, BODY), BODY)
    fal_emulator.webhooks.rotate_key()
    check.verify(fal_emulator.webhooks.headers(REQUEST_ID, BODY), BODY)
    assert check.fetches == 2


def test_keys_out_of_reach_make_deliveries_unverifiable(fal_emulator: FalEmulator) -> None:
    check = WebhookVerifier(f"http://127.0.0.1:{free_port()}/jwks.json", timeout=2.0)
    headers = fal_emulator.webhooks.headers(REQUEST_ID, BODY)
    with pytest.raises(WebhookUnverifiable, match="cannot fetch fal's webhook keys"):
        check.verify(headers, BODY)
    with pytest.raises(WebhookUnverifiable, match="could not be fetched lately"):
        check.verify(headers, BODY)
    assert check.fetches == 1  # not asked again at once


def test_the_probe(fal_emulator: FalEmulator) -> None:
    assert probe_jwks(fal_emulator.base_url + JWKS_PATH, 5.0).message.endswith(
        "serves 1 Ed25519 key(s)")
    missing = probe_jwks(fal_emulator.base_url + "/no-keys-here", 5.0)
    assert not missing.ok and "answered 404" in missing.message


def test_parse_an_ok_delivery() -> None:
    delivery = parse_delivery(BODY)
    assert delivery.ok and delivery.gateway_request_id == REQUEST_ID
    result = delivery.result()
    assert result is not None and result.images[0].width == 1024
    assert result.seed == 196619188014358660


def test_parse_an_error_delivery() -> None:
    body = {"request_id": REQUEST_ID, "gateway_request_id": REQUEST_ID, "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "field required",
                                    "type": "value_error.missing"}]}}
    delivery = parse_delivery(json.dumps(body).encode())
    assert not delivery.ok and delivery.result() is None
    assert delivery.failure() == "Invalid status code: 422: prompt: field required"


def test_parse_a_payload_error() -> None:
    body = {"request_id": REQUEST_ID, "gateway_request_id": REQUEST_ID, "status": "OK",
            "payload": None, "payload_error": PAYLOAD_ERROR}
    delivery = parse_delivery(json.dumps(body).encode())
    assert delivery.ok and delivery.result() is None
    assert delivery.payload_error == PAYLOAD_ERROR


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"status": "OK"}',
                                  b'{"request_id": "x", "status": "DONE"}', b"\xff\xfe"])
def test_parse_refuses_what_is_no_delivery(body: bytes) -> None:
    with pytest.raises(WebhookMalformed):
        parse_delivery(body)
