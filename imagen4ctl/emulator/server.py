"""A local fal.ai queue API over HTTPS: the test double for the real `fal_client`, and a tool.

fal_client reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST at import and always speaks https, so the
emulator serves TLS with its own CA (made by trustme); `env()` gives the variables a client
needs, SSL_CERT_FILE included. One host serves everything:

    POST /{owner}/{alias}[/{path}]             submit  -> 200 {request_id, response_url,
                                                           status_url, cancel_url, queue_position}
    GET  /{owner}/{alias}/requests/{id}/status  status  -> 202 IN_QUEUE / IN_PROGRESS,
                                                           200 COMPLETED (?logs=1 adds logs)
    GET  /{owner}/{alias}/requests/{id}/status/stream
                                                stream  -> text/event-stream, one status
                                                           object an event, until COMPLETED
    GET  /{owner}/{alias}/requests/{id}         result  -> the model's answer once COMPLETED
    PUT  /{owner}/{alias}/requests/{id}/cancel  cancel  -> 202 / 400 ALREADY_COMPLETED / 404
    GET  /files/{id}/{n}.{png,jpeg,webp}        the images (public, like fal's CDN)
    GET  /v1/models/requests/by-endpoint        Platform API listing (see platform.py)
    GET  /v1/serverless/requests/by-endpoint    the same, for endpoints the caller owns
    GET  /v1/account/billing?expand=credits     the account's balance (see platform.py)
    GET  /.well-known/jwks.json                 the keys that sign webhook deliveries; a
                                                submission with ?fal_webhook=URL is POSTed
                                                to URL when it ends (see webhooks.py)

A request spends `latency * queue_fraction` seconds IN_QUEUE, with queue_position counting
down to 0, then the rest IN_PROGRESS, then COMPLETED. State is computed from timestamps, so
any number of requests run side by side. The apps behind the queue are the three Imagen 4
endpoints of imagen4ctl's registry (endpoints.py, checked in model.py); a result carries per
image `url`, `content_type`, `file_name`, `file_size`, `width` and `height`, plus
`description`, and no `seed`: fal-js's `Imagen4PreviewOutput = NanoBananaOutput` as of
2026-04-07 (https://github.com/fal-ai/fal-js/blob/9830f25d025218a0d5eb684ab5193cad58d95955/
libs/client/src/types/endpoints.ts, lines 31411 and 18516). With `sync_mode` the url is a
data URI ("the media will be returned as a data URI", same types).

Behaviour chosen where fal's documentation is silent (the real service may differ):

- Invalid input is accepted at submit, like fal's queue does; the request completes without
  an error in its status, and the result answers 422 with pydantic's `detail` list. A field
  the endpoint does not take is invalid input ("extra_forbidden"): fal's material does not
  say whether fal refuses or ignores it, and refusing is the safe side.
- A submission to any other endpoint path answers 404 at once, so a typo in an endpoint id
  cannot pass a test. fal answers unknown paths with 404 (fal-ai/fal PR 99,
  https://github.com/fal-ai/fal/pull/99, makes an app's 404 say "Path {path} not found");
  whether the queue refuses at submit or the result answers 404, and the exact body, are
  not documented.
- Cancelling a queued or running request answers 202 {"status": "CANCELLATION_REQUESTED"},
  a finished one 400 {"status": "ALREADY_COMPLETED"}, an unknown id 404 {"status":
  "NOT_FOUND"} (fal's statuses: https://fal.ai/docs/inference-api/queue/cancel and
  https://docs.fal.ai/documentation/deployment/requests, "CANCELLATION_REQUESTED (202) or
  ALREADY_COMPLETED (400)"; the code of NOT_FOUND is not documented). fal removes a queued
  request; a running one only gets a signal, and "the model app decides how to stop the
  work" (same page). Here the runner stops at once: the request ends COMPLETED with error
  "Request was cancelled" / error_type "request_cancelled" (fal does not document what a
  cancelled request reports), its result answers 400 with that detail, it never produces
  images and is not listed by the Platform API. With the fault `cancel=ignored` a running
  request ignores the signal and completes with its images, billed, as an app without
  cancellation handling does
  (https://fal.ai/docs/documentation/development/handle-cancellations).
- A submission is answered once it is queued; the fault `submit=queued:ACTION` queues the
  request and then loses its answer (an nginx 502, a reset), which is how a client that
  sends the POST again pays twice (see faults.py for fal_client's retry rules).
- A result is kept `result_ttl` seconds after completion (`large_result_ttl` when its JSON
  is `large_result_threshold` bytes or more), as fal documents (1 hour / 6 minutes from
  10 KB). Afterwards the result answers 404 {"detail": "Request not found"}, the same as an
  unknown id; the status still says COMPLETED. Images stay served until `reset()`.
- Keys: `Authorization: Key <key>`. Missing → 401; a key outside `accepted_keys` (when set)
  → 401; a key in `forbidden_keys` → 403 on every call (a key fal refuses outright; the body
  is this emulator's, fal's is not documented). All accepted keys belong to one account: any
  of them can read any request.
- A locked account (a key in `locked_keys`): submissions answer 403
  {"detail": "User is locked. Reason: <lock_reason>"}; status, result, cancel, files and the
  Platform API answer as usual. Source: fal-ai/fal issue 1147
  (https://github.com/fal-ai/fal/issues/1147: "A plain queue.fal.run/.../status GET returns
  200, but ... all render calls return 403"); the bodies are quoted in issues 1112
  (https://github.com/fal-ai/fal/issues/1112, "Exhausted balance. Top up your balance at
  fal.ai/dashboard/billing."), 1163 (https://github.com/fal-ai/fal/issues/1163, "TOP_UP.")
  and 1168 (https://github.com/fal-ai/fal/issues/1168, "Admin lock. Please contact
  support@fal.ai"). A lock and the balance are separate knobs: 1112 and 1147 report a lock
  that outlived a positive balance.
- The sync API (fal.run) shares the host, so `fal_client.run()` is not emulated.

The status stream follows fal's page (https://fal.ai/docs/inference-api/queue/status-stream):
"Each event has a data: line with a status object. The status object has the same fields as
the response of Get request status. The server closes the stream after it sends the
COMPLETED event. The server sends a comment line every 15 seconds to keep the connection
open." Here an event goes out whenever the status object changes (the state, the queue
position, a new log line with ?logs=1), the comment line is `: keep-alive` every `keepalive`
seconds (15 by default; tests shorten it), and the body is chunked. Whether fal's events carry
every log line so far or only the new ones is not documented: here, as in the status call,
every line so far.

Faults are described in faults.py; the request log in log.py.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit

import trustme

from imagen4ctl.emulator.faults import (
    ERROR_TYPES,
    Fault,
    FaultPlan,
    FaultSpecError,
    faults_in_prompt,
    parse_faults,
)
from imagen4ctl.emulator.images import (
    CONTENT_TYPES,
    NOT_AN_IMAGE,
    image_size,
    padded_png,
    render_image,
)
from imagen4ctl.emulator.log import Kind, Lifetime, LogEntry, RequestLog, fingerprint
from imagen4ctl.emulator.model import Imagen4Input, ValidationError, validate
from imagen4ctl.emulator.platform import (
    PlatformError,
    PlatformRecord,
    billing,
    endpoint_ids,
    list_requests,
)
from imagen4ctl.emulator.webhooks import JWKS_PATH, WebhookSender, delivery_body
from imagen4ctl.endpoints import ENDPOINTS

logger = logging.getLogger(__name__)

APP_NAMESPACES = ("workflows", "comfy")
LOCK_REASONS = {  # fal's reasons as its users quote them (issues 1112/1147, 1163, 1168)
    "balance": "Exhausted balance. Top up your balance at fal.ai/dashboard/billing.",
    "top_up": "TOP_UP.",
    "admin": "Admin lock. Please contact support@fal.ai",
}
LOCKED_PREFIX = "User is locked. Reason: "
LOCKED_MESSAGE = LOCKED_PREFIX + LOCK_REASONS["balance"]
FORBIDDEN_MESSAGE = "Forbidden: this key may not use this API"
CANCELLED_MESSAGE = "Request was cancelled"
CANCELLED_TYPE = "request_cancelled"
SLOW_PIECES = 20
_NOT_JSON = object()
MODELS_LISTING = ("models", "requests", "by-endpoint")
SERVERLESS_LISTING = ("serverless", "requests", "by-endpoint")
PLATFORM_PATHS = (MODELS_LISTING, SERVERLESS_LISTING)
BILLING_PATH = ("account", "billing")


@dataclass
class Request:
    """One HTTP request as the emulator sees it; header names are lower-case."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    host: str


@dataclass
class Reply:
    """What to answer; `body` may be an iterable (then `length` is required), and `stream`
    a chunked body of unknown length that ends when the iterator does."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    length: int | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay: float = 0.0
    drop: bool = False
    stream: Generator[bytes, None, None] | None = None


class _Cut(Exception):
    """Raised by a stream's body: the connection closes there, with the body unfinished."""


@dataclass
class _Trace:
    kind: Kind = "other"
    request_id: str | None = None
    key_fingerprint: str | None = None
    prompt: str | None = None
    fault: Fault | None = None  # the fault that fired on this call, if any


@dataclass
class _Job:
    request_id: str
    app_id: str
    endpoint_id: str
    arguments: Any
    model_input: Imagen4Input | None
    errors: list[ValidationError]
    directives: FaultPlan
    run_fault: Fault | None
    seed: int
    submitted: float  # monotonic
    submitted_wall: float
    queue_seconds: float
    run_seconds: float
    position: int
    cancelled_at: float | None = None
    file_sizes: list[int] | None = None
    webhook_url: str | None = None  # the submission's ?fal_webhook=

    @property
    def hangs(self) -> bool:
        return self.run_fault is not None and self.run_fault.action == "hang"

    def wall(self, moment: float) -> datetime:
        return datetime.fromtimestamp(self.submitted_wall + moment - self.submitted, UTC)


@dataclass(frozen=True)
class _Phase:
    state: str  # IN_QUEUE | IN_PROGRESS | COMPLETED
    position: int = 0
    progress: float = 0.0
    ended: float = 0.0  # monotonic end time when COMPLETED


@dataclass(frozen=True)
class _Outcome:
    status_code: int
    body: Any
    error: str | None = None
    error_type: str | None = None


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _nginx_page(code: int) -> bytes:
    title = f"{code} {_phrase(code)}"
    return (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}"
            f"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode()


def _unknown_endpoint(segments: list[str]) -> Reply:
    """fal's 404 for a path no app serves; an Imagen 4 app's own words for a sub-path it
    lacks ("Path /preview/fsat not found", fal-ai/fal PR 99)."""
    known_apps = {"/".join(endpoint.split("/")[:2]) for endpoint in ENDPOINTS}
    if len(segments) > 2 and "/".join(segments[:2]) in known_apps:
        return _json_reply(404, {"detail": f"Path /{'/'.join(segments[2:])} not found"})
    return _json_reply(404, {"detail": "Not Found"})


def _json_reply(status: int, body: Any, request_id: str | None = None) -> Reply:
    headers = {"x-fal-request-id": request_id} if request_id else {}
    return Reply(status=status, body=_json_bytes(body), headers=headers)


class FalEmulator:
    """fal's queue API for Imagen 4, on a background HTTPS server; see the module docstring.

    The constructor's arguments up to `queue_depth` are plain attributes (`faults` accepts a
    spec string) that tests may change while the server runs; `latency`, `queue_fraction`
    and run/latency faults apply to requests submitted afterwards. `log` records every call,
    and each queued request's lifetime (queued, started, ended) for concurrency checks.
    """

    def __init__(
        self,
        latency: float = 1.0,
        queue_fraction: float = 0.3,
        accepted_keys: Iterable[str] | None = None,
        forbidden_keys: Iterable[str] = (),
        locked_keys: Iterable[str] = (),
        lock_reason: str = LOCK_REASONS["balance"],
        balance: float = 10.0,
        billing_refused: bool = False,
        faults: str | FaultPlan | None = None,
        result_ttl: float = 3600.0,
        large_result_ttl: float = 360.0,
        large_result_threshold: int = 10 * 1024,
        payload_ttl: float = 30 * 86400.0,
        owned_namespaces: Iterable[str] = (),
        keepalive: float = 15.0,
        queue_depth: int = 2,
        host: str = "127.0.0.1",
        port: int = 0,
        cert_dir: str | Path | None = None,
    ) -> None:
        self.latency = latency
        self.queue_fraction = queue_fraction
        self.accepted_keys: set[str] | None = None if accepted_keys is None else set(accepted_keys)
        self.forbidden_keys: set[str] = set(forbidden_keys)
        self.locked_keys: set[str] = set(locked_keys)
        self.lock_reason = lock_reason
        self.balance = balance  # what GET /v1/account/billing reports, in USD
        self.billing_refused = billing_refused  # 403 there: a key without billing permission
        self.result_ttl = result_ttl
        self.large_result_ttl = large_result_ttl
        self.large_result_threshold = large_result_threshold
        self.payload_ttl = payload_ttl
        # The serverless/ listing covers only endpoints the caller owns (these namespaces).
        self.owned_namespaces: set[str] = set(owned_namespaces)
        self.keepalive = keepalive  # seconds between a status stream's comment lines
        self.queue_depth = queue_depth
        self.log = RequestLog()
        # One clock for every lifetime in the log, so that two requests' times compare exactly.
        self._epoch = time.time() - time.monotonic()

        self._lock = threading.RLock()
        self._faults = FaultPlan()
        self._run_counts: dict[tuple[str, str], int] = {}
        self._directive_counts: dict[tuple[str, str], int] = {}
        self.faults = faults
        self._jobs: dict[str, _Job] = {}
        self._rng = random.Random()
        # Status streams wait on this between events; a cancel or stop() wakes them.
        self._changed = threading.Condition()
        self._wakes = 0
        self._defaults = {name: getattr(self, name) for name in (
            "latency", "queue_fraction", "accepted_keys", "forbidden_keys", "locked_keys",
            "lock_reason", "balance", "billing_refused", "faults",
            "result_ttl", "large_result_ttl", "large_result_threshold", "payload_ttl",
            "owned_namespaces", "keepalive", "queue_depth")}

        self._bind_host = host
        self._bind_port = port
        self._cert_dir = Path(cert_dir) if cert_dir is not None else None
        self._owns_cert_dir = False
        self._ca_path: Path | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._renderer: ThreadPoolExecutor | None = None
        self.webhooks = WebhookSender()  # its knobs (time_scale, drop, forge): webhooks.py

    # -- knobs -------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    @faults.setter
    def faults(self, value: str | FaultPlan | None) -> None:
        plan = value if isinstance(value, FaultPlan) else parse_faults(value)
        with self._lock:
            self._faults = plan
            self._run_counts.clear()

    def restore_defaults(self) -> None:
        """Put every knob back to its constructor value (sets are copied, not shared)."""
        for name, value in self._defaults.items():
            setattr(self, name, set(value) if isinstance(value, set) else value)
        self.webhooks.restore_defaults()

    def reset(self) -> None:
        """Forget every request, fault count and log entry; knobs are left alone."""
        with self._lock:
            self._jobs.clear()
            self._run_counts.clear()
            self._directive_counts.clear()
        self.log.clear()
        self.webhooks.reset()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        if self._cert_dir is None:
            self._cert_dir = Path(tempfile.mkdtemp(prefix="imagen4ctl-fal-emulator-"))
            self._owns_cert_dir = True
        self._cert_dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="imagen4ctl fal emulator")
        names = ["127.0.0.1", "localhost"]
        if self._bind_host not in (*names, "0.0.0.0", ""):
            names.append(self._bind_host)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(context)
        self._ca_path = self._cert_dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self._ca_path))
        try:
            self._server = _Server((self._bind_host, self._bind_port), context, self)
        except OSError:
            self._remove_cert_dir()
            raise
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fal-render")
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="fal-emulator", daemon=True)
        self._thread.start()
        self.webhooks.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        self._wake_streams()  # they see the server gone and end
        server.server_close()
        server.close_connections()
        self.webhooks.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._renderer is not None:
            self._renderer.shutdown(wait=False, cancel_futures=True)
            self._renderer = None
        self._remove_cert_dir()

    def _remove_cert_dir(self) -> None:
        """Only a directory the emulator made itself; a --cert-dir of the user's stays."""
        if self._owns_cert_dir and self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None
            self._owns_cert_dir = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The host clients connect to (a wildcard bind is reached through 127.0.0.1)."""
        return "127.0.0.1" if self._bind_host in ("0.0.0.0", "") else self._bind_host

    @property
    def port(self) -> int:
        if self._server is None:
            return self._bind_port
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def platform_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def jwks_url(self) -> str:
        """Where the keys that sign this emulator's webhook deliveries are served."""
        return self.base_url + JWKS_PATH

    @property
    def ca_path(self) -> Path:
        if self._ca_path is None:
            raise RuntimeError("the emulator has not been started")
        return self._ca_path

    def env(self) -> dict[str, str]:
        """The variables that point fal_client (and our Platform API client) here."""
        netloc = f"{self.host}:{self.port}"
        return {
            "FAL_RUN_HOST": netloc,
            "FAL_QUEUE_RUN_HOST": netloc,
            "SSL_CERT_FILE": str(self.ca_path),
            "FAL_PLATFORM_API_URL": self.platform_url,
        }

    @staticmethod
    def fingerprint(key: str) -> str:
        return fingerprint(key)

    # -- inspection --------------------------------------------------------------------

    def request_ids(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def state(self, request_id: str) -> str | None:
        """IN_QUEUE, IN_PROGRESS or COMPLETED; None for an unknown id."""
        with self._lock:
            job = self._jobs.get(request_id)
            return None if job is None else self._phase(job, time.monotonic()).state

    # -- request handling --------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        """Answer one HTTP request and log it; called from the server's worker threads."""
        trace = _Trace()
        try:
            reply = self._dispatch(request, trace)
        except Exception:  # an emulator bug must still answer, and show up in the test output
            logger.exception("fal emulator failed on %s %s", request.method, request.path)
            reply = _json_reply(500, {"detail": "Emulator error"})
        self.log.record(LogEntry(
            kind=trace.kind, method=request.method, path=request.path,
            request_id=trace.request_id, key_fingerprint=trace.key_fingerprint,
            status=None if reply.drop else reply.status, at=datetime.now(UTC),
            prompt=trace.prompt,
        ))
        return reply

    def _dispatch(self, request: Request, trace: _Trace) -> Reply:
        segments = [part for part in request.path.split("/") if part]
        method = request.method
        if request.path == JWKS_PATH and method in ("GET", "HEAD"):
            return _json_reply(200, self.webhooks.jwks())
        if segments[:1] == ["v1"]:
            trace.kind = "platform"
            return self._platform(request, tuple(segments[1:]), trace)
        if segments[:1] == ["files"] and len(segments) == 3 and method in ("GET", "HEAD"):
            trace.kind = "file"
            return self._file(request, segments[1], segments[2], trace)
        if method == "POST" and len(segments) >= 2:
            trace.kind = "submit"
            return self._submit(request, segments, trace)
        if "requests" in segments:
            at = len(segments) - 1 - segments[::-1].index("requests")
            app, rest = "/".join(segments[:at]), segments[at + 1:]
            if at >= 2 and rest:
                trace.request_id = rest[0]
                if method == "GET" and len(rest) == 1:
                    trace.kind = "result"
                    return self._result(request, app, rest[0], trace)
                if method == "GET" and rest[1:] == ["status"]:
                    trace.kind = "status"
                    return self._status(request, app, rest[0], trace)
                if method == "GET" and rest[1:] == ["status", "stream"]:
                    trace.kind = "stream"
                    return self._stream(request, app, rest[0], trace)
                if method == "PUT" and rest[1:] == ["cancel"]:
                    trace.kind = "cancel"
                    return self._cancel(request, app, rest[0], trace)
        return _json_reply(404, {"detail": "Not Found"})

    def _auth(self, request: Request, trace: _Trace, platform: bool = False,
              submit: bool = False) -> Reply | None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "key" or not key:
            status, message = 401, "Missing or malformed Authorization header: use 'Key <key>'"
        else:
            trace.key_fingerprint = fingerprint(key)
            if key in self.forbidden_keys:
                status, message = 403, FORBIDDEN_MESSAGE
            elif self.accepted_keys is not None and key not in (
                    self.accepted_keys | self.locked_keys):  # a locked account's key is known
                status, message = 401, "No user found for Key ID and Secret"
            elif submit and key in self.locked_keys:
                status, message = 403, LOCKED_PREFIX + self.lock_reason
            else:
                return None
        if platform:
            return _json_reply(status, {"error": {"type": "authorization_error",
                                                  "message": message}})
        return _json_reply(status, {"detail": message})

    def _fire(self, point: str, directives: FaultPlan, scope: str) -> Fault | None:
        """The fault to apply now at `point`, counting it; request faults beat run-wide ones."""
        with self._lock:
            fault = directives.get(point)
            counts = self._directive_counts
            if fault is None:
                fault = self._faults.get(point)
                counts = self._run_counts
            if fault is None:
                return None
            if fault.times is not None:
                used = counts.get((scope, point), 0)
                if used >= fault.times:
                    return None
                counts[(scope, point)] = used + 1
            return fault

    @staticmethod
    def _http_fault(fault: Fault, request_id: str | None, platform: bool = False) -> Reply | None:
        if fault.action == "drop":
            return Reply(drop=True)
        if fault.action == "ingress":
            code = fault.code or 502
            return Reply(status=code, body=_nginx_page(code), content_type="text/html")
        # Anything the app answers carries its request id; a refused submit gets a fresh one.
        answer_id = request_id or str(uuid.uuid4())
        if fault.action == "http":
            code = fault.code or 500
            if platform:
                return _json_reply(code, {"error": {"type": "server_error",
                                                    "message": _phrase(code)}})
            return _json_reply(code, {"detail": _phrase(code)}, answer_id)
        if fault.action == "malformed":
            body = b'{"request_id": "' + answer_id.encode() + b'", "status": "IN_QU'
            return Reply(body=body, headers={"x-fal-request-id": answer_id})
        return None

    # -- queue -------------------------------------------------------------------------

    def _urls(self, request: Request, app: str, request_id: str) -> dict[str, str]:
        base = f"https://{request.host}/{app}/requests/{request_id}"
        return {"response_url": base, "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel"}

    def _submit(self, request: Request, segments: list[str], trace: _Trace) -> Reply:
        try:
            arguments = json.loads(request.body) if request.body else {}
        except ValueError:
            arguments = _NOT_JSON
        prompt = arguments.get("prompt") if isinstance(arguments, dict) else None
        trace.prompt = prompt if isinstance(prompt, str) else None
        denied = self._auth(request, trace, submit=True)
        if denied is not None:
            return denied
        endpoint = ENDPOINTS.get("/".join(segments))
        if endpoint is None:
            return _unknown_endpoint(segments)
        if arguments is _NOT_JSON:
            return _json_reply(422, {"detail": [{"loc": ["body"], "msg": "JSON decode error",
                                                 "type": "json_invalid"}]})
        webhook = request.query.get("fal_webhook", [None])[-1]
        if webhook is not None and urlsplit(webhook).scheme not in ("http", "https"):
            return _json_reply(422, {"detail": "fal_webhook must be an http(s) URL"})
        header = request.headers.get("x-emulator-fault")
        try:
            directives = faults_in_prompt(trace.prompt or "").merged(parse_faults(header))
        except FaultSpecError as e:
            return _json_reply(400, {"detail": f"bad fault directive: {e}"})
        fault = self._fire("submit", directives, f"{trace.prompt}\0{header}")
        if fault is not None and not fault.queued:
            reply = self._http_fault(fault, None)
            if reply is not None:
                return reply

        namespaced = segments[0] in APP_NAMESPACES and len(segments) >= 3
        app_id = "/".join(segments[:3] if namespaced else segments[:2])
        model_input, errors = validate(arguments, endpoint)
        now, request_id = time.monotonic(), str(uuid.uuid4())
        trace.request_id = request_id
        with self._lock:
            plan = self._faults.merged(directives)
            latency_fault = plan.get("latency")
            latency = latency_fault.seconds if latency_fault and latency_fault.seconds is not None \
                else self.latency
            queue_seconds = max(0.0, latency * self.queue_fraction)
            seed = model_input.seed if model_input and model_input.seed is not None \
                else self._rng.randrange(2**31)
            ahead = sum(1 for job in self._jobs.values()
                        if self._phase(job, now).state == "IN_QUEUE")
            job = _Job(
                request_id=request_id, app_id=app_id, endpoint_id="/".join(segments),
                arguments=arguments, model_input=model_input, errors=errors,
                directives=directives, run_fault=plan.get("run"), seed=seed,
                submitted=now, submitted_wall=time.time(), queue_seconds=queue_seconds,
                # Validation fails as soon as a runner picks the request up.
                run_seconds=0.0 if errors else max(0.0, latency - queue_seconds),
                position=self.queue_depth + ahead, webhook_url=webhook,
            )
            self._jobs[request_id] = job
            self.log.record_queued(Lifetime(
                request_id=request_id, endpoint_id=job.endpoint_id, prompt=trace.prompt,
                queued_at=self._at(now), started_at=self._at(now + queue_seconds),
                ended_at=None if job.hangs else self._at(now + queue_seconds + job.run_seconds)))
        if model_input is not None and self._renderer is not None:
            # The images are made while the request runs, as at fal: rendered at completion,
            # a wave of requests finishing together would wait on this process's CPU.
            self._renderer.submit(self._file_sizes, job)
        if webhook is not None and not job.hangs:
            self._schedule_webhook(job, request, now + queue_seconds + job.run_seconds)
        if fault is not None and fault.queued:  # queued, and billed; its answer is lost
            lost = self._http_fault(fault, request_id)
            if lost is not None:
                return lost
        body = {"status": "IN_QUEUE", "request_id": request_id,
                **self._urls(request, app_id, request_id), "queue_position": job.position}
        return _json_reply(200, body, request_id)

    def _schedule_webhook(self, job: _Job, request: Request, due: float) -> None:
        """fal POSTs a request's end to the URL its submission carried (webhooks.py)."""
        assert job.webhook_url is not None
        self.webhooks.schedule(job.request_id, job.webhook_url, due,
                               lambda: self._webhook_body(job, request))

    def _webhook_body(self, job: _Job, request: Request) -> dict[str, Any]:
        outcome = self._outcome(job, request)
        return delivery_body(job.request_id, outcome.status_code, outcome.body)

    def _at(self, moment: float) -> datetime:
        """A monotonic moment as UTC, on the clock every lifetime shares."""
        return datetime.fromtimestamp(self._epoch + moment, UTC)

    def _phase(self, job: _Job, now: float) -> _Phase:
        if job.cancelled_at is not None and now >= job.cancelled_at:
            return _Phase("COMPLETED", ended=job.cancelled_at)
        queue_end = job.submitted + job.queue_seconds
        if now < queue_end:
            remaining = (queue_end - now) / job.queue_seconds
            return _Phase("IN_QUEUE", position=min(job.position,
                                                   math.floor(job.position * remaining)))
        if job.hangs:
            return _Phase("IN_PROGRESS")
        run_end = queue_end + job.run_seconds
        if now < run_end:
            return _Phase("IN_PROGRESS", progress=(now - queue_end) / job.run_seconds)
        return _Phase("COMPLETED", progress=1.0, ended=run_end)

    def _job(self, app: str, request_id: str) -> _Job | None:
        with self._lock:
            job = self._jobs.get(request_id)
        return job if job is not None and job.app_id == app else None

    def _outcome(self, job: _Job, request: Request) -> _Outcome:
        if job.cancelled_at is not None:
            return _Outcome(400, {"detail": CANCELLED_MESSAGE, "error_type": CANCELLED_TYPE},
                            CANCELLED_MESSAGE, CANCELLED_TYPE)
        if job.errors or job.model_input is None:
            return _Outcome(422, {"detail": job.errors})
        if job.run_fault is not None and job.run_fault.action == "error":
            error_type = job.run_fault.error_type or "internal_error"
            code, message = ERROR_TYPES.get(error_type, (500, "Internal server error"))
            return _Outcome(code, {"detail": message, "error_type": error_type},
                            message, error_type)
        images: list[dict[str, Any]] = []
        spec = job.model_input
        width, height = image_size(spec.aspect_ratio, spec.resolution)
        extension, content_type = spec.output_format, CONTENT_TYPES[spec.output_format]
        if job.run_fault is None or job.run_fault.action != "noimages":
            for index, size in enumerate(self._file_sizes(job)):
                url = f"https://{request.host}/files/{job.request_id}/{index}.{extension}"
                if spec.sync_mode:
                    url = f"data:{content_type};base64," + base64.b64encode(
                        self._image(job, index)).decode()
                images.append({
                    "url": url, "content_type": content_type,
                    "file_name": f"imagen4-{job.seed}-{index}.{extension}",
                    "file_size": size, "width": width, "height": height,
                })
        return _Outcome(200, {"images": images, "description": ""})

    def _file_fault(self, job: _Job) -> Fault | None:
        with self._lock:
            return job.directives.get("file") or self._faults.get("file")

    def _file_sizes(self, job: _Job) -> list[int]:
        """Sizes as served, so file_size agrees with the bytes (fault padding included)."""
        if job.file_sizes is None:
            assert job.model_input is not None
            fault = self._file_fault(job)
            sizes = []
            for index in range(job.model_input.num_images):
                if fault is not None and fault.action == "large" and fault.size is not None:
                    sizes.append(fault.size)
                elif fault is not None and fault.action == "notimage":
                    sizes.append(len(NOT_AN_IMAGE))
                else:
                    sizes.append(len(self._image(job, index)))
            job.file_sizes = sizes
        return job.file_sizes

    @staticmethod
    def _image(job: _Job, index: int) -> bytes:
        assert job.model_input is not None
        spec = job.model_input
        return render_image(spec.aspect_ratio, spec.resolution, job.seed, index,
                            spec.output_format)

    def _logs(self, job: _Job, phase: _Phase, now: float) -> list[dict[str, str]]:
        if phase.state == "IN_QUEUE" or job.model_input is None:
            return []
        spec = job.model_input
        lines = [
            (0.0, "INFO", f"Generating {spec.num_images} image(s) with Imagen 4 "
                          f"({spec.aspect_ratio}, {spec.resolution})"),
            (0.25, "INFO", "Prompt sent to the model"),
            (0.75, "INFO", "Model answered; encoding images"),
        ]
        if job.run_fault is not None and job.run_fault.action == "error":
            lines.append((1.0, "ERROR", f"Request failed: {job.run_fault.error_type}"))
        else:
            lines.append((1.0, "INFO", f"Stored {spec.num_images} image(s)"))
        started = job.submitted + job.queue_seconds
        until = now if job.cancelled_at is None else min(now, job.cancelled_at)
        shown = []
        for fraction, level, message in lines:
            moment = started + fraction * job.run_seconds
            if phase.state == "IN_PROGRESS" and fraction > phase.progress:
                break
            if moment > until:
                break
            shown.append({"message": message, "level": level, "source": "USER",
                          "timestamp": job.wall(moment).isoformat()})
        return shown

    def _find(self, request: Request, app: str, request_id: str, trace: _Trace, point: str,
              missing: dict[str, str] | None = None) -> _Job | Reply:
        """The request's job, or the answer that stops here: auth, unknown id, a fault."""
        denied = self._auth(request, trace)
        if denied is not None:
            return denied
        job = self._job(app, request_id)
        if job is None:
            return _json_reply(404, missing or {"detail": "Request not found"})
        fault = trace.fault = self._fire(point, job.directives, request_id)
        if fault is not None and (reply := self._http_fault(fault, request_id)) is not None:
            return reply
        return job

    def _find_phase(self, request: Request, app: str, request_id: str, trace: _Trace,
                    point: str) -> tuple[_Job, _Phase, float] | Reply:
        """`_find`, then where the job stands now (and that moment)."""
        found = self._find(request, app, request_id, trace, point)
        if isinstance(found, Reply):
            return found
        now = time.monotonic()
        with self._lock:
            return found, self._phase(found, now), now

    def _status(self, request: Request, app: str, request_id: str, trace: _Trace) -> Reply:
        found = self._find_phase(request, app, request_id, trace, "status")
        if isinstance(found, Reply):
            return found
        job, phase, now = found
        body = self._status_body(request, app, job, phase, now)
        return _json_reply(200 if phase.state == "COMPLETED" else 202, body, request_id)

    def _status_body(self, request: Request, app: str, job: _Job, phase: _Phase,
                     now: float) -> dict[str, Any]:
        """The status object: the status call's answer, and each event of the stream."""
        with_logs = request.query.get("logs", ["0"])[-1].lower() in ("1", "true", "yes")
        body: dict[str, Any] = {"status": phase.state, "request_id": job.request_id,
                                **self._urls(request, app, job.request_id),
                                "logs": self._logs(job, phase, now) if with_logs else None}
        if phase.state == "IN_QUEUE":
            body["queue_position"] = phase.position
        elif phase.state == "COMPLETED":
            outcome = self._outcome(job, request)
            body["metrics"] = ({"inference_time": round(job.run_seconds, 3)}
                               if outcome.status_code != 422 and job.cancelled_at is None
                               else {})
            if outcome.error is not None:
                body["error"], body["error_type"] = outcome.error, outcome.error_type
        return body

    def _stream(self, request: Request, app: str, request_id: str, trace: _Trace) -> Reply:
        found = self._find(request, app, request_id, trace, "stream")
        if isinstance(found, Reply):
            return found
        fault = trace.fault
        if fault is not None and fault.action == "refuse":
            return _json_reply(404, {"detail": "Not Found"})
        cut = fault is not None and fault.action == "cut"
        return Reply(content_type="text/event-stream",
                     headers={"cache-control": "no-store", "x-fal-request-id": request_id},
                     stream=self._events(request, app, found, cut=cut))

    def _events(self, request: Request, app: str, job: _Job, *,
                cut: bool) -> Generator[bytes, None, None]:
        """The stream's body: an event whenever the status object changes, a comment line
        every `keepalive` seconds, and the end after COMPLETED (`cut`: after the first event,
        without the body's end)."""
        sent: dict[str, Any] | None = None
        keepalive_at = time.monotonic() + self.keepalive
        while self._server is not None:
            with self._changed:
                wakes = self._wakes
            now = time.monotonic()
            with self._lock:
                phase = self._phase(job, now)
                change = self._next_change(job, phase, now)
            body = self._status_body(request, app, job, phase, now)
            if body != sent:
                sent = body
                yield b"data: " + _json_bytes(body) + b"\n\n"
                if phase.state == "COMPLETED":
                    return
                if cut:
                    raise _Cut
            now = time.monotonic()
            if now >= keepalive_at:
                yield b": keep-alive\n\n"
                keepalive_at = now + self.keepalive
            wake = keepalive_at if change is None else min(change, keepalive_at)
            with self._changed:
                if self._wakes == wakes:
                    self._changed.wait(max(0.0, wake - time.monotonic()))

    @staticmethod
    def _next_change(job: _Job, phase: _Phase, now: float) -> float | None:
        """When `job`'s status object may change next; None: only a cancel changes it."""
        queue_end = job.submitted + job.queue_seconds
        if phase.state == "COMPLETED" or (phase.state == "IN_PROGRESS" and job.hangs):
            return None
        if phase.state == "IN_QUEUE":
            if phase.position == 0 or job.position == 0:
                return queue_end
            # The position drops below `phase.position` once the queue's remaining fraction
            # (see _phase) falls below phase.position / job.position.
            moment = queue_end - phase.position / job.position * job.queue_seconds
        else:  # a new log line comes at a quarter of the run (see _logs); it ends at 4/4
            quarter = math.floor(phase.progress * 4) + 1
            moment = queue_end + quarter / 4 * job.run_seconds
        return max(moment, now + 0.001)

    def _wake_streams(self) -> None:
        with self._changed:
            self._wakes += 1
            self._changed.notify_all()

    def _result(self, request: Request, app: str, request_id: str, trace: _Trace) -> Reply:
        found = self._find_phase(request, app, request_id, trace, "result")
        if isinstance(found, Reply):
            return found
        job, phase, now = found
        if phase.state != "COMPLETED":
            return _json_reply(400, {"detail": "Request is still in progress"}, request_id)
        outcome = self._outcome(job, request)
        body = _json_bytes(outcome.body)
        large = len(body) >= self.large_result_threshold
        if now - phase.ended > (self.large_result_ttl if large else self.result_ttl):
            return _json_reply(404, {"detail": "Request not found"})
        headers = {"x-fal-request-id": request_id}
        if outcome.error_type is not None:
            headers["x-fal-error-type"] = outcome.error_type
        return Reply(status=outcome.status_code, body=body, headers=headers)

    def _cancel(self, request: Request, app: str, request_id: str, trace: _Trace) -> Reply:
        found = self._find(request, app, request_id, trace, "cancel",
                           missing={"status": "NOT_FOUND", "detail": "Request not found"})
        if isinstance(found, Reply):
            return found
        job = found
        ignored = trace.fault is not None and trace.fault.action == "ignored"
        with self._lock:
            now = time.monotonic()
            state = self._phase(job, now).state
            if state == "COMPLETED":
                return _json_reply(400, {"status": "ALREADY_COMPLETED",
                                         "detail": "Request already completed"}, request_id)
            if not (ignored and state == "IN_PROGRESS"):
                job.cancelled_at = now
                self.log.record_cancelled(request_id, self._at(now))
                if job.webhook_url is not None:  # a cancel ends it now: fal says so now
                    self._schedule_webhook(job, request, now)
        self._wake_streams()
        return _json_reply(202, {"status": "CANCELLATION_REQUESTED"}, request_id)

    # -- files -------------------------------------------------------------------------

    def _file(self, request: Request, request_id: str, name: str, trace: _Trace) -> Reply:
        trace.request_id = request_id
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if key.strip():
            trace.key_fingerprint = fingerprint(key.strip())
        with self._lock:
            job = self._jobs.get(request_id)
            phase = None if job is None else self._phase(job, time.monotonic())
        stem, _, extension = name.partition(".")
        if (job is None or phase is None or phase.state != "COMPLETED" or not stem.isdigit()
                or job.model_input is None or extension != job.model_input.output_format
                or job.cancelled_at is not None or int(stem) >= job.model_input.num_images):
            return _json_reply(404, {"detail": "Not Found"})
        content_type = CONTENT_TYPES[extension]
        index = int(stem)
        fault = self._fire("file", job.directives, request_id)
        if fault is not None:
            reply = self._http_fault(fault, None)
            if reply is not None:
                reply.headers.pop("x-fal-request-id", None)
                return reply
            if fault.action == "notimage":
                return Reply(body=NOT_AN_IMAGE, content_type="image/png")
            if fault.action == "large" and fault.size is not None:
                width, height = image_size(job.model_input.aspect_ratio,
                                           job.model_input.resolution)
                return Reply(body=padded_png(width, height, fault.size), length=fault.size,
                             content_type="image/png")
            if fault.action == "slow" and fault.seconds is not None:
                data = self._image(job, index)
                step = math.ceil(len(data) / SLOW_PIECES)
                pieces = [data[i:i + step] for i in range(0, len(data), step)]
                return Reply(body=pieces, length=len(data), content_type=content_type,
                             chunk_delay=fault.seconds / len(pieces))
        return Reply(body=self._image(job, index), content_type=content_type)

    # -- Platform API ------------------------------------------------------------------

    def _platform(self, request: Request, route: tuple[str, ...], trace: _Trace) -> Reply:
        if request.method != "GET" or route not in (*PLATFORM_PATHS, BILLING_PATH):
            return _json_reply(404, {"error": {"type": "not_found", "message": "Not Found"}})
        denied = self._auth(request, trace, platform=True)
        if denied is not None:
            return denied
        fault = self._fire("platform", FaultPlan(), "*")
        if fault is not None:
            reply = self._http_fault(fault, None, platform=True)
            if reply is not None:
                return reply
        if route == BILLING_PATH:
            return self._billing(request)
        try:
            if route == SERVERLESS_LISTING:
                for endpoint in endpoint_ids(request.query):
                    if endpoint.split("/")[0] not in self.owned_namespaces:
                        raise PlatformError(
                            403, "authorization_error",
                            f"You do not own the endpoint {endpoint!r}: request history is "
                            f"only available for your own endpoints")
            body = list_requests(self._platform_records(request), request.query,
                                 datetime.now(UTC), self.payload_ttl)
        except PlatformError as e:
            return _json_reply(e.status, e.body())
        return _json_reply(200, body)

    def _billing(self, request: Request) -> Reply:
        if self.billing_refused:
            return _json_reply(403, {"error": {
                "type": "authorization_error",
                "message": "This key lacks the billing:usage:read permission"}})
        return _json_reply(200, billing(self.balance, request.query))

    def _platform_records(self, request: Request) -> list[PlatformRecord]:
        now = time.monotonic()
        wanted = request.query.get("request_id", [None])[-1]
        with self._lock:
            # A lookup of one request id builds one record, not one per request ever made.
            jobs = ([self._jobs[wanted]] if wanted in self._jobs else []) if wanted else list(
                self._jobs.values())
            finished = [(job, self._phase(job, now)) for job in jobs]
        records = []
        for job, phase in finished:
            if phase.state != "COMPLETED" or job.cancelled_at is not None:
                continue
            outcome = self._outcome(job, request)
            records.append(PlatformRecord(
                request_id=job.request_id, endpoint_id=job.endpoint_id,
                sent_at=job.wall(job.submitted),
                started_at=job.wall(job.submitted + job.queue_seconds),
                ended_at=job.wall(phase.ended), status_code=outcome.status_code,
                json_input=job.arguments, json_output=outcome.body,
            ))
        return records


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate TLS records; without TCP_NODELAY the body waits for
    # the client's delayed ACK, about 45 ms on every answer of a kept-alive connection.
    disable_nagle_algorithm = True
    server_version = "fal-emulator"
    sys_version = ""
    timeout = 30.0  # an idle keep-alive connection gives its thread back after this

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator keeps its own log."""

    def _serve(self) -> None:
        server = cast(_Server, self.server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        host = headers.get("host") or f"{server.emulator.host}:{server.emulator.port}"
        reply = server.emulator.handle(Request(self.command, split.path, parse_qs(split.query),
                                               headers, body, host))
        if reply.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        if reply.stream is not None:
            self._write_stream(reply, reply.stream)
            return
        pieces: Iterable[bytes]
        if isinstance(reply.body, bytes):
            pieces, length = [reply.body], len(reply.body)
        else:
            pieces, length = reply.body, reply.length or 0
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(length))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            for piece in pieces:
                self.wfile.write(piece)
                if reply.chunk_delay:
                    self.wfile.flush()
                    time.sleep(reply.chunk_delay)
        except OSError:  # the client hung up, e.g. a size limit stopped the download
            self.close_connection = True

    def _write_stream(self, reply: Reply, stream: Generator[bytes, None, None]) -> None:
        """A chunked body, each piece sent as it comes; `_Cut` hangs up in the middle."""
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for piece in stream:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        except _Cut:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except OSError:  # the client left (its deadline came), or stop() closed the socket
            self.close_connection = True
        finally:
            stream.close()


class _Server(ThreadingHTTPServer):
    """TLS per connection, handshaken in the worker thread so a slow client blocks no one."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext,
                 emulator: FalEmulator) -> None:
        self.ssl_context = context
        self.emulator = emulator
        self._open: set[ssl.SSLSocket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        raw = cast(socket.socket, request)
        raw.settimeout(10)
        try:
            tls = self.ssl_context.wrap_socket(raw, server_side=True)
        except OSError:  # handshake failed: a client without our CA, or a port scan
            return
        with self._open_lock:
            self._open.add(tls)
        try:
            _Handler(tls, client_address, self)
        except OSError:
            pass
        finally:
            with self._open_lock:
                self._open.discard(tls)
            try:
                tls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            tls.close()

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
