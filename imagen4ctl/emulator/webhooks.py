"""fal's webhooks, as the emulator sends them: a request submitted with `?fal_webhook=URL`
is POSTed to URL when it ends, signed, and delivered again while URL does not take it.

fal's own words (https://fal.ai/docs/model-apis/webhooks): "Once the request is done
processing in the queue, a POST request is made to the webhook URL, passing the request info
and the resulting payload. The status indicates whether the request was successful or not."
The body is `{request_id, gateway_request_id, status: "OK" | "ERROR", payload}`, with `error`
("Invalid status code: 422" in fal's example) when ERROR, and `payload: null` with a
`payload_error` when the payload could not be serialized. "If the webhook fails to deliver
the payload, it will retry 10 times in the span of 2 hours."

Not from fal's own text (third-party reconstructions; README's "What is not verified against
fal"): the four signature headers X-Fal-Webhook-Request-Id, -User-Id, -Timestamp (Unix
seconds) and -Signature (hex ED25519 over "request_id\\nuser_id\\ntimestamp\\nhex(sha256(body))"),
the JWKS (here at /.well-known/jwks.json of the emulator's host, fal's is said to be
https://rest.alpha.fal.ai/.well-known/jwks.json), and the 15 s delivery timeout. fal's retry
schedule, and which answers count as failed, are not documented: here any answer but 2xx, and
any transport error, is retried after RETRY_DELAYS (10 retries, 2 h in all), scaled by the
knob `time_scale`. Every delivery of one request is byte-for-byte the same body, re-signed.
A cancel ends a request at once and posts it then (ERROR, the cancel's 400); a request that
never ends (`run=hang`) is never posted; a `fal_webhook` that is not an http(s) URL is refused
at submit with 422. fal documents none of these three.

Knobs (plain attributes, put back by `restore_defaults`):

- `time_scale`: the retry delays are multiplied by it (0.001: two hours in seven seconds);
- `drop`: every delivery is lost on the way (never sent, recorded as dropped);
- `forge`: every delivery is sent broken: "signature" (a wrong one), "body" (altered after
  signing), "stale" (signed, timestamped 10 minutes ago), "unsigned" (no signature headers),
  "key" (signed by a key the JWKS does not list);
- `payload_error`: OK deliveries carry `payload: null` and fal's `payload_error` text.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

logger = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
RETRY_DELAYS = (15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 1200.0, 1800.0, 2400.0)
DELIVERY_TIMEOUT = 15.0
# fal-js issue 153 quotes it (https://github.com/fal-ai/fal-js/issues/153).
PAYLOAD_ERROR = ("Response payload is not JSON serializable. Either return a JSON serializable "
                 "object or use the queue endpoint to retrieve the response.")
USER_ID = "emulator-user"

Body = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST of a delivery (or one that was dropped); times are timezone-aware UTC."""

    request_id: str
    url: str
    attempt: int  # 0: the first delivery; 1..10 the retries
    status: int | None  # the receiver's answer; None: no answer (or dropped)
    at: datetime
    dropped: bool = False
    forged: str | None = None


@dataclass
class _Pending:
    request_id: str
    url: str
    body: Body  # made when first due, so it reports the request as it ended
    version: int
    attempt: int = 0
    data: bytes | None = None


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class WebhookSender:
    """Sends the deliveries of one emulator: one scheduler thread, a few sender threads."""

    def __init__(self, user_id: str = USER_ID) -> None:
        self.user_id = user_id
        self.time_scale = 1.0
        self.drop = False
        self.forge: str | None = None
        self.payload_error = False
        self._keys: list[tuple[str, Ed25519PrivateKey]] = []
        self.rotate_key()
        self._heap: list[tuple[float, int, _Pending]] = []
        self._versions: dict[str, int] = {}
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._attempts: list[DeliveryAttempt] = []
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None
        self._running = False

    # -- keys --------------------------------------------------------------------------

    def rotate_key(self) -> str:
        """A new signing key, listed in the JWKS with the older ones; its key id."""
        key = Ed25519PrivateKey.generate()
        kid = hashlib.sha256(_raw_public(key)).hexdigest()[:16]
        self._keys.append((kid, key))
        return kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64url(_raw_public(key)),
                          "kid": kid, "use": "sig", "alg": "EdDSA"}
                         for kid, key in self._keys]}

    def headers(self, request_id: str, body: bytes, *, timestamp: int | None = None,
                key: Ed25519PrivateKey | None = None) -> dict[str, str]:
        """The four signed headers of a delivery of `body` (tests forge their own with it)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        message = "\n".join((request_id, self.user_id, stamp,
                             hashlib.sha256(body).hexdigest())).encode()
        signature = (key or self._keys[-1][1]).sign(message).hex()
        return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": self.user_id,
                "X-Fal-Webhook-Timestamp": stamp, "X-Fal-Webhook-Signature": signature}

    # -- knobs and lifecycle -----------------------------------------------------------

    def restore_defaults(self) -> None:
        """The knobs as constructed, and the first key alone (rotated ones are dropped)."""
        self.time_scale, self.drop, self.forge, self.payload_error = 1.0, False, None, False
        del self._keys[1:]

    def reset(self) -> None:
        """Forget pending deliveries and the attempts seen; knobs are left alone."""
        with self._cond:
            self._heap.clear()
            self._versions.clear()
            self._attempts.clear()
            self._cond.notify_all()

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fal-webhook")
        # One client for the sender threads, without building a TLS context for each
        # delivery (tens of milliseconds of this process's time, not fal's), and otherwise as
        # a client per delivery was: a new connection each (none kept alive), no cookie kept
        # from one answer for the next delivery.
        self._client = httpx.Client(
            timeout=DELIVERY_TIMEOUT, follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))
        self._thread = threading.Thread(target=self._loop, name="fal-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        # Not closed under a delivery still on its way: that one ends as it would have; the
        # client, with no connection kept alive, holds nothing once they have.
        self._client = None

    # -- deliveries --------------------------------------------------------------------

    def schedule(self, request_id: str, url: str, due: float, body: Body) -> None:
        """Deliver `body()` to `url` at `due` (monotonic); replaces an earlier schedule of
        the same request (a cancel ends it sooner)."""
        with self._cond:
            version = self._versions[request_id] = self._versions.get(request_id, 0) + 1
            pending = _Pending(request_id, url, body, version)
            heapq.heappush(self._heap, (due, next(self._order), pending))
            self._cond.notify_all()

    def attempts(self, request_id: str | None = None) -> list[DeliveryAttempt]:
        with self._cond:
            return [a for a in self._attempts if request_id is None or a.request_id == request_id]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if not self._running:
                    return
                _, _, pending = heapq.heappop(self._heap)
                if self._versions.get(pending.request_id) != pending.version:
                    continue  # rescheduled, or forgotten by reset()
                pool = self._pool
            if pool is not None:
                try:
                    pool.submit(self._deliver, pending)
                except RuntimeError:  # stop() shut the pool down meanwhile
                    return

    def _deliver(self, pending: _Pending) -> None:
        try:
            if pending.data is None:
                pending.data = json.dumps(self._shaped(pending.body()),
                                          separators=(",", ":")).encode()
            status = self._post(pending, pending.data)
        except Exception:  # an emulator bug: log it, and do not retry for ever
            logger.exception("fal emulator: the webhook of %s failed", pending.request_id)
            return
        if status is not None and 200 <= status < 300:
            return
        if pending.attempt >= len(RETRY_DELAYS):
            return  # fal gives up after its tenth retry
        delay = RETRY_DELAYS[pending.attempt] * self.time_scale
        pending.attempt += 1
        with self._cond:
            if self._versions.get(pending.request_id) == pending.version:
                heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order),
                                            pending))
                self._cond.notify_all()

    def _shaped(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.payload_error and body.get("status") == "OK":
            return {**body, "payload": None, "payload_error": PAYLOAD_ERROR}
        return body

    def _post(self, pending: _Pending, data: bytes) -> int | None:
        forged = self.forge
        if self.drop:
            self._note(pending, None, dropped=True)
            return None
        headers = {"Content-Type": "application/json"}
        body = data
        if forged == "stale":
            headers |= self.headers(pending.request_id, data, timestamp=int(time.time()) - 600)
        elif forged == "key":
            headers |= self.headers(pending.request_id, data, key=Ed25519PrivateKey.generate())
        elif forged != "unsigned":
            headers |= self.headers(pending.request_id, data)
        if forged == "signature":
            headers["X-Fal-Webhook-Signature"] = uuid.uuid4().hex * 4
        elif forged == "body":
            body = data.replace(b'"status":"OK"', b'"status":"ERROR"', 1) if \
                b'"status":"OK"' in data else data + b" "
        client = self._client
        if client is None:  # stopped meanwhile
            return None
        try:
            response = client.post(pending.url, content=body, headers=headers)
        except httpx.HTTPError:
            self._note(pending, None, forged=forged)
            return None
        self._note(pending, response.status_code, forged=forged)
        return response.status_code

    def _note(self, pending: _Pending, status: int | None, *, dropped: bool = False,
              forged: str | None = None) -> None:
        with self._cond:
            self._attempts.append(DeliveryAttempt(pending.request_id, pending.url,
                                                  pending.attempt, status, datetime.now(UTC),
                                                  dropped, forged))


def delivery_body(request_id: str, status_code: int, payload: Any) -> dict[str, Any]:
    """fal's delivery of a request that ended with the app's `status_code` and `payload`."""
    body: dict[str, Any] = {"request_id": request_id, "gateway_request_id": request_id}
    if 200 <= status_code < 300:
        return {**body, "status": "OK", "payload": payload}
    return {**body, "status": "ERROR", "error": f"Invalid status code: {status_code}",
            "payload": payload}
