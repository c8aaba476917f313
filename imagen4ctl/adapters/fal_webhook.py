"""fal's webhook deliveries: verified before anything in them is read, then parsed.

fal's own words (https://fal.ai/docs/model-apis/webhooks): a submission with `?fal_webhook=URL`
makes fal POST `{request_id, gateway_request_id, status: "OK" | "ERROR", payload, error?}` to
URL when the request ends; a payload that is not JSON comes as `payload: null` with a
`payload_error`; a failed delivery is retried "10 times in the span of 2 hours"; deliveries
are signed and must be verified "using a set of public keys".

How they are signed is NOT in the part of fal's page we could read; it is a reconstruction
on which every third-party implementation we found agrees (hooklistener's fal.ai webhooks
guide, and public integrations): four headers, X-Fal-Webhook-Request-Id, -User-Id,
-Timestamp (Unix seconds) and -Signature (hex ED25519), over the UTF-8 of
"request_id\\nuser_id\\ntimestamp\\nhex(sha256(raw body))"; the keys from the JWKS at
https://rest.alpha.fal.ai/.well-known/jwks.json (OKP/Ed25519 keys); a timestamp within
±5 minutes. README's "What is not verified against fal" lists it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagen4ctl.adapters.fal import FalResult, detail_text, parse_result, transport_reason
from imagen4ctl.errors import FalError, FalUnavailable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"
SIGNED_HEADERS = (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
MAX_BODY = 1024 * 1024  # fal's deliveries carry image URLs, not images
LEEWAY = 300.0  # seconds a delivery's timestamp may be off, either way
REFETCH_EVERY = 60.0  # a signature no known key verifies refetches the keys this rarely
KEYS_KEPT = 24 * 3600.0  # the keys are fetched again after this ("cache JWKS up to 24 h")


class WebhookRejected(FalError):
    """A delivery that is not fal's, not whole, not fresh, or too large: nothing of it is
    read. `status` is the HTTP answer (401, or 413 for the size)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class WebhookUnverifiable(FalUnavailable):
    """fal's keys could not be had, so no delivery can be checked now: fal should retry."""


class WebhookMalformed(FalError):
    """A verified delivery whose body is not fal's delivery shape."""


@dataclass(frozen=True)
class Delivery:
    """One verified delivery: fal's verdict on `request_id`, with its answer when OK."""

    request_id: str
    gateway_request_id: str | None
    status: str  # OK | ERROR
    payload: Any
    error: str | None = None
    payload_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def result(self) -> FalResult | None:
        """The request's answer, or None when fal could not put it in the delivery
        (`payload_error`): the queue's result call still has it."""
        if not self.ok or self.payload is None:
            return None
        return parse_result(self.payload)

    def failure(self) -> str:
        """fal's error as the row's one line: its message and the payload's detail."""
        detail = self.payload.get("detail") if isinstance(self.payload, dict) else None
        text = self.error or "the request failed"
        return f"{text}: {detail_text(detail)}" if detail else text


def parse_delivery(body: bytes) -> Delivery:
    """A verified body as a Delivery; WebhookMalformed when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise WebhookMalformed("the delivery is not JSON") from e
    if not isinstance(data, dict):
        raise WebhookMalformed("the delivery is not a JSON object")
    request_id, status = data.get("request_id"), data.get("status")
    if not isinstance(request_id, str) or not request_id:
        raise WebhookMalformed("the delivery has no request_id")
    if status not in ("OK", "ERROR"):
        raise WebhookMalformed(f"the delivery's status is {str(status)[:20]!r}, not OK or ERROR")
    gateway, error, payload_error = (data.get(name) for name in
                                     ("gateway_request_id", "error", "payload_error"))
    return Delivery(request_id, gateway if isinstance(gateway, str) else None, status,
                    data.get("payload"), error if isinstance(error, str) else None,
                    payload_error if isinstance(payload_error, str) else None)


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode()


def fetch_keys(url: str, timeout: float) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of the JWKS at `url`; FalUnavailable when it cannot be had."""
    import httpx

    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.TransportError as e:
        raise FalUnavailable(f"cannot fetch fal's webhook keys from {url}: "
                             f"{transport_reason(e)}") from e
    if response.status_code != 200:
        raise FalUnavailable(f"fal's webhook keys at {url} answered {response.status_code}")
    try:
        document = response.json()
        keys = [_public_key(jwk) for jwk in document["keys"]
                if isinstance(jwk, dict) and jwk.get("kty") == "OKP"
                and jwk.get("crv") == "Ed25519"]
    except (ValueError, KeyError, TypeError) as e:
        raise FalUnavailable(f"fal's webhook keys at {url} are not a JWKS") from e
    if not keys:
        raise FalUnavailable(f"the JWKS at {url} has no Ed25519 key")
    return keys


def _public_key(jwk: dict[str, Any]) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    x = str(jwk["x"])
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError("a key's x is not base64url") from e
    return Ed25519PublicKey.from_public_bytes(raw)


class WebhookVerifier:
    """Checks deliveries against the JWKS at `jwks_url`; thread-safe, one per server.

    The keys are fetched on first use and kept for `keys_kept` seconds. A signature none of
    them verifies (a key fal rotated in, or a forgery) fetches them again, at most once every
    `refetch_every` seconds, so forged deliveries cannot make this hammer the JWKS.
    """

    def __init__(self, jwks_url: str, *, timeout: float = 5.0, leeway: float = LEEWAY,
                 refetch_every: float = REFETCH_EVERY, keys_kept: float = KEYS_KEPT,
                 clock: Callable[[], float] = time.time) -> None:
        self.jwks_url = jwks_url
        self.timeout = timeout
        self.leeway = leeway
        self.refetch_every = refetch_every
        self.keys_kept = keys_kept
        self.clock = clock
        self.fetches = 0  # how often the JWKS was asked for (tests read it)
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at = -math.inf  # monotonic; the last attempt, failed ones too
        self._refetched_at = -math.inf  # ... and the last one an unknown key asked for
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Return if fal signed this body lately; raise WebhookRejected otherwise, or
        WebhookUnverifiable when fal's keys cannot be had. Reads nothing of the body but its
        size and hash."""
        if len(body) > MAX_BODY:
            raise WebhookRejected(f"delivery over {MAX_BODY} bytes", status=413)
        lowered = {name.lower(): value for name, value in headers.items()}
        values = [lowered.get(name.lower(), "").strip() for name in SIGNED_HEADERS]
        missing = [name for name, value in zip(SIGNED_HEADERS, values, strict=True) if not value]
        if missing:
            raise WebhookRejected(f"unsigned delivery: no {', '.join(missing)}")
        request_id, user_id, timestamp, signature_hex = values
        try:
            sent = float(timestamp)
        except ValueError:
            sent = math.nan
        if not math.isfinite(sent):
            raise WebhookRejected("the delivery's timestamp is not a number")
        if abs(self.clock() - sent) > self.leeway:
            raise WebhookRejected(f"stale delivery: its timestamp is more than "
                                  f"{self.leeway:g}s away from now")
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise WebhookRejected("the delivery's signature is not hex") from None
        message = signed_message(request_id, user_id, timestamp, body)
        if self._any_verifies(self._current_keys(), signature, message):
            return
        renewed = self._refetched()
        if renewed is not None and self._any_verifies(renewed, signature, message):
            return
        raise WebhookRejected("the delivery's signature matches none of fal's keys")

    @staticmethod
    def _any_verifies(keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        for key in keys:
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            return True
        return False

    def _current_keys(self) -> list[Ed25519PublicKey]:
        with self._lock:
            age = time.monotonic() - self._fetched_at
            if self._keys and age < self.keys_kept:
                return self._keys
            if not self._keys and age < self.refetch_every:
                raise WebhookUnverifiable(f"fal's webhook keys at {self.jwks_url} could not "
                                          "be fetched lately")
            return self._fetch()

    def _refetched(self) -> list[Ed25519PublicKey] | None:
        """The keys fetched anew, or None when the last fetch is too recent."""
        with self._lock:
            if time.monotonic() - self._refetched_at < self.refetch_every:
                return None
            self._refetched_at = time.monotonic()
            try:
                return self._fetch()
            except WebhookUnverifiable:
                return None  # the keys held are kept; the signature still matched none

    def _fetch(self) -> list[Ed25519PublicKey]:
        self._fetched_at = time.monotonic()
        self.fetches += 1
        try:
            self._keys = fetch_keys(self.jwks_url, self.timeout)
        except FalUnavailable as e:
            if self._keys:  # keep what we had: fal's keys rarely change
                return self._keys
            raise WebhookUnverifiable(e.message, hint="Check FAL_WEBHOOK_JWKS_URL.") from e
        return self._keys


@dataclass(frozen=True)
class JwksProbe:
    ok: bool
    message: str


def probe_jwks(url: str, timeout: float) -> JwksProbe:
    """Whether the JWKS at `url` serves Ed25519 keys (for check-config)."""
    try:
        keys = fetch_keys(url, timeout)
    except FalUnavailable as e:
        return JwksProbe(False, e.message)
    return JwksProbe(True, f"{url} serves {len(keys)} Ed25519 key(s)")
