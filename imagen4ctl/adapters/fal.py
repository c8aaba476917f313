"""The only module that talks to fal: fal_client for the queue, httpx for downloads and probes.

fal_client retries transport errors about ten times with backoff, and caches the
credentials of its module-level client. So each `FalAdapter` passes the key explicitly and
gives fal_client an httpx client whose transport enforces the caller's deadline: every call
ends by the deadline, and transport errors come back to us at once instead of being retried
blindly — a retried submission whose answer was lost is a second bill. The submission's POST
does not go through fal_client's retries at all (see `submit` and fal_answers.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import httpx

from imagen4ctl.adapters.fal_answers import (
    FIX_PENDING_FINDS_IT,
    LOCKED_PREFIX,
    FalNotFound,
    FalResultRefused,
    account_locked,
    cancel_answer,
    queued_request_id,
    resend_after,
    result_is_verdict,
)
from imagen4ctl.adapters.fal_answers import FalSubmissionUnknown as FalSubmissionUnknown
from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import (
    FalError,
    FalKeyRejected,
    FalRequestRejected,
    FalUnavailable,
)

if TYPE_CHECKING:
    import fal_client


class FalTimeout(FalUnavailable):
    """The caller's deadline passed while talking to fal."""


class _Unreachable(Exception):
    """Raised by the transport instead of httpx's errors, so fal_client does not retry them."""

    def __init__(self, error: httpx.TransportError, sent: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.sent = sent


class _DeadlinePassed(Exception):
    def __init__(self, sent: bool = False) -> None:
        super().__init__("deadline passed")
        self.sent = sent  # whether the request may have reached fal before the deadline


_current = threading.local()


def _deadline() -> Deadline:
    deadline = getattr(_current, "deadline", None)
    return deadline if deadline is not None else Deadline(None)


# fal_client's backoff: base 0.1 s doubling, jitter up to ×1.5, capped at 30 s.
def _worst_next_delay(attempt: int) -> float:
    return min(0.1 * 2.0 ** (attempt - 1) * 1.5, 30.0)


_RETRIED_STATUSES = {408, 409, 429, 502, 503, 504}
_ONCE = "imagen4ctl.once"  # a request extension: this request is not retried by fal_client


def _note_sent(event: str, info: dict[str, Any]) -> None:
    """httpcore's trace of a request: notes when it has left, whole (monotonic clock)."""
    if event == "http11.send_request_body.complete":
        _current.sent_at = time.monotonic()


class _BoundedTransport(httpx.BaseTransport):
    """Caps every request by the thread's deadline and hands transport errors back unretried."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner
        self._attempts: dict[tuple[int, str, str], int] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = _deadline()
        remaining = deadline.remaining()
        if remaining <= 0:
            raise _DeadlinePassed()
        timeouts = dict(request.extensions.get("timeout", {}))
        for name in ("connect", "read", "write", "pool"):
            current = timeouts.get(name)
            timeouts[name] = remaining if current is None else min(current, remaining)
        request.extensions["timeout"] = timeouts
        request.extensions["trace"] = _note_sent
        try:
            response = self._inner.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            raise _Unreachable(e, sent=False) from e
        except httpx.TransportError as e:
            if deadline.passed:
                raise _DeadlinePassed(sent=True) from e
            raise _Unreachable(e, sent=True) from e
        if response.status_code in _RETRIED_STATUSES and not request.extensions.get(_ONCE):
            # fal_client will sleep and retry; stop it here if that sleep would pass the deadline.
            key = (threading.get_ident(), request.method, str(request.url))
            with self._lock:
                attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
            if _worst_next_delay(attempt) >= deadline.remaining():
                response.read()
                response.close()
                raise _DeadlinePassed()
        return response

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class Submitted:
    request_id: str
    # When the (last attempt of the) submission had left whole, monotonic clock: fal's clock
    # for the request starts about then, while its answer may come much later under load.
    sent_at: float


@dataclass(frozen=True)
class FalStatus:
    state: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    queue_position: int | None = None
    logs: tuple[str, ...] = ()
    error: str | None = None
    error_type: str | None = None
    result: FalResult | None = None  # fal's answer, when it came with the status (a webhook)


@dataclass(frozen=True)
class ImageRef:
    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    width: int | None = None  # fal's output carries them since 2025-12 (fal-js ImageFile)
    height: int | None = None


@dataclass(frozen=True)
class FalResult:
    images: tuple[ImageRef, ...]
    seed: int | None = None


@dataclass
class FalAdapter:
    """fal's queue through fal_client, for one key; thread-safe, one per command run."""

    key: str = field(repr=False)
    key_source: str = "FAL_KEY"
    webhook_url: str | None = None  # where fal POSTs each submission's end (fal_webhook.py)

    @cached_property
    def _http(self) -> httpx.Client:
        """The client fal_client sends on: its BackupDomainTransport (which fails over to
        fal's backup host only before a connection exists), bounded by the deadline."""
        from fal_client.client import USER_AGENT, BackupDomainTransport

        return httpx.Client(
            transport=_BoundedTransport(BackupDomainTransport()),
            headers={"Authorization": f"Key {self.key}", "User-Agent": USER_AGENT},
            timeout=httpx.Timeout(60.0, connect=10.0),
            follow_redirects=True,
        )

    @cached_property
    def _client(self) -> fal_client.SyncClient:
        import fal_client

        key = self.key
        http = self._http

        class _Client(fal_client.SyncClient):
            @cached_property
            def _client(self) -> httpx.Client:
                return http

        return _Client(key=key)

    @contextmanager
    def bounded(self, deadline: Deadline) -> Iterator[None]:
        """Every fal call in this block ends by `deadline`; errors become imagen4ctl errors."""
        previous = getattr(_current, "deadline", None)
        _current.deadline = deadline
        try:
            yield
        finally:
            _current.deadline = previous

    def submit(self, endpoint: str, arguments: dict[str, Any], deadline: Deadline) -> Submitted:
        """The request id fal gave the submission, and when the submission left.

        The POST goes out once, not through fal_client's `submit`, which sends it again on
        answers that may follow a queued (paid) request; only a 429, which queued nothing,
        is sent again (fal_answers.py). An answer that may mean "queued" raises
        FalSubmissionUnknown.
        """
        from fal_client.client import QUEUE_URL_FORMAT

        attempt = 0
        while True:
            with self.bounded(deadline), self._translated("submit", submitting=True):
                _current.sent_at = None
                response = self._http.request("POST", QUEUE_URL_FORMAT + endpoint,
                                              json=arguments, extensions={_ONCE: True},
                                              params=({"fal_webhook": self.webhook_url}
                                                      if self.webhook_url else None),
                                              timeout=self._client.default_timeout)
                answered = time.monotonic()
                sent_at = getattr(_current, "sent_at", None)
                pause = resend_after(response, attempt, deadline.remaining())
                if pause is None:
                    request_id = queued_request_id(response)
            if pause is None:
                break
            time.sleep(pause)
            attempt += 1
        if not isinstance(request_id, str) or not request_id:  # a 200: fal may have queued it
            raise FalSubmissionUnknown("fal answered the submission without a request id",
                                       hint=FIX_PENDING_FINDS_IT)
        return Submitted(request_id, sent_at if sent_at is not None else answered)

    def status(self, endpoint: str, request_id: str, deadline: Deadline) -> FalStatus:
        with self.bounded(deadline), self._translated("status"):
            status = self._client.get_handle(endpoint, request_id).status(with_logs=True)
        return fal_status(status, request_id)

    def result(self, endpoint: str, request_id: str, deadline: Deadline) -> FalResult:
        """The answer of a request fal has reported COMPLETED.

        fal_client's own `result` asks for the status once more before it fetches the answer:
        one more round trip on every generation's way to its images, and one more request.
        """
        from fal_client.client import QUEUE_POLL_TIMEOUT, FalClientHTTPError, _maybe_retry_request

        with self.bounded(deadline), self._translated("result"):
            handle = self._client.get_handle(endpoint, request_id)
            try:
                response = _maybe_retry_request(handle.client, "GET", handle.response_url,
                                                timeout=QUEUE_POLL_TIMEOUT)
            except FalClientHTTPError as e:
                if e.status_code == 404:
                    raise FalNotFound(f"fal's queue no longer has the result of {request_id}"
                                      ) from e
                if result_is_verdict(e.status_code):
                    raise FalResultRefused(http_error(
                        "result", e.status_code, e.message, self.key_source).message) from e
                raise
            data = response.json()
        return parse_result(data)

    def cancel(self, endpoint: str, request_id: str, deadline: Deadline) -> str:
        """fal's answer: CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND
        (fal_answers.py); a running request may still complete, and be billed."""
        from fal_client.client import QUEUE_POLL_TIMEOUT, FalClientHTTPError, _maybe_retry_request

        with self.bounded(deadline), self._translated("cancel"):
            handle = self._client.get_handle(endpoint, request_id)
            try:
                response = _maybe_retry_request(handle.client, "PUT", handle.cancel_url,
                                                timeout=QUEUE_POLL_TIMEOUT)
            except FalClientHTTPError as e:
                said = cancel_answer(e.response)
                if e.status_code == 404:
                    return "NOT_FOUND"
                if e.status_code == 400 and said == "ALREADY_COMPLETED":
                    return said
                raise
        return cancel_answer(response) or "CANCELLATION_REQUESTED"

    @contextmanager
    def _translated(self, what: str, *, submitting: bool = False) -> Iterator[None]:
        import fal_client

        try:
            yield
        except _DeadlinePassed as e:
            if submitting and e.sent:
                raise FalSubmissionUnknown(
                    "the deadline passed while fal was answering the submission",
                    hint=FIX_PENDING_FINDS_IT,
                ) from e
            raise FalTimeout(f"fal did not answer the {what} in time",
                             hint="Raise --timeout, or check fal's status page.") from e
        except _Unreachable as e:
            host = e.error.request.url.host if _has_request(e.error) else "fal"
            reason = transport_reason(e.error)
            if submitting and e.sent:
                raise FalSubmissionUnknown(
                    f"the submission to {host} may have arrived but its answer was lost "
                    f"({reason})",
                    hint=FIX_PENDING_FINDS_IT,
                ) from e
            raise FalUnavailable(f"cannot reach fal at {host}: {reason}",
                                 hint="Check the network, FAL_RUN_HOST/FAL_QUEUE_RUN_HOST and "
                                 "SSL_CERT_FILE; `imagen4ctl check-config` probes it.") from e
        except fal_client.FalClientHTTPError as e:
            raise http_error(what, e.status_code, e.message, self.key_source) from e
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            if submitting:  # a 200 we cannot read may still be an accepted, billed request
                raise FalSubmissionUnknown(
                    "fal sent a malformed answer to the submission",
                    hint=FIX_PENDING_FINDS_IT,
                ) from e
            raise FalError(f"fal sent a malformed answer to the {what}") from e


def _has_request(error: httpx.TransportError) -> bool:
    try:
        error.request  # noqa: B018  (raises RuntimeError when unset)
    except RuntimeError:
        return False
    return True


def transport_reason(error: httpx.TransportError) -> str:
    text = str(error).lower()
    if isinstance(error, httpx.ConnectTimeout | httpx.TimeoutException):
        return "timed out"
    if "certificate" in text or "ssl" in text:
        return "TLS certificate not trusted (SSL_CERT_FILE?)"
    if "refused" in text:
        return "connection refused"
    if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError):
        return "connection dropped"
    return type(error).__name__


def http_error(what: str, status: int, detail: Any, key_source: str) -> FalError:
    """fal's HTTP error as one line; `detail` may be a string or fal's 422 list."""
    text = detail_text(detail)
    if status == 403 and isinstance(detail, str) and detail.startswith(LOCKED_PREFIX):
        return account_locked(detail)
    if status in {401, 403}:
        return FalKeyRejected(f"fal rejected the key from {key_source} ({status}: {text})",
                              hint=f"Check {key_source}; `imagen4ctl check-config` shows which "
                              "variable is used.")
    if status == 422:
        return FalRequestRejected(f"fal refused the arguments: {text}")
    if status == 404 and what == "submit":
        return FalRequestRejected(f"fal has no such endpoint ({text})",
                                  hint="Check IMAGEN4_MODEL.")
    if status == 404:
        return FalRequestRejected(f"fal does not know this request any more ({text})")
    if status == 429:
        return FalUnavailable(f"fal is rate limiting this key (429: {text})",
                              hint="Lower --concurrency, or wait and retry.")
    return FalUnavailable(f"fal answered the {what} with {status}: {text}")


def detail_text(detail: Any, limit: int = 200) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        text = "; ".join(parts)
    else:
        text = str(detail)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fal_status(status: fal_client.Status, request_id: str) -> FalStatus:
    """fal_client's status object as ours (the status call's, and each event of the stream)."""
    import fal_client

    if isinstance(status, fal_client.Queued):
        return FalStatus("IN_QUEUE", queue_position=int(status.position))
    if isinstance(status, fal_client.InProgress):
        return FalStatus("IN_PROGRESS", logs=_log_lines(status.logs))
    if isinstance(status, fal_client.Completed):
        return FalStatus("COMPLETED", logs=_log_lines(status.logs),
                         error=status.error, error_type=status.error_type)
    raise FalError(f"fal answered an unknown status for {request_id}")


def _log_lines(logs: Any) -> tuple[str, ...]:
    if not isinstance(logs, list):
        return ()
    return tuple(str(entry.get("message", "")) for entry in logs if isinstance(entry, dict))


def parse_result(data: Any) -> FalResult:
    """fal's Imagen 4 output; width, height (and seed) only where fal gives them."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FalResultRefused("fal's result has no images list")
    images = []
    for item in data["images"]:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise FalResultRefused("fal's result has an image without a url")
        size, width, height = (_int_or_none(item.get(name))
                               for name in ("file_size", "width", "height"))
        images.append(ImageRef(item["url"], item.get("content_type"), item.get("file_name"),
                               size, width, height))
    seed = data.get("seed")
    return FalResult(tuple(images), seed if isinstance(seed, int) else None)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def queue_host() -> str:
    """The queue host fal_client uses (read from FAL_QUEUE_RUN_HOST when it was imported)."""
    from fal_client.auth import FAL_QUEUE_RUN_HOST

    return str(FAL_QUEUE_RUN_HOST)


def request_base_url(endpoint: str) -> str:
    """https://HOST/owner/alias — fal's request URLs drop the endpoint's sub-path."""
    from fal_client.client import AppId

    app = AppId.from_endpoint_id(endpoint)
    prefix = f"{app.namespace}/" if app.namespace else ""
    return f"https://{queue_host()}/{prefix}{app.owner}/{app.alias}"


@dataclass(frozen=True)
class ProbeVerdict:
    accepted: bool
    host: str
    message: str
    hint: str | None = None


def probe_key(key: str, endpoint: str, *, timeout: float, key_source: str) -> ProbeVerdict:
    """Ask fal's queue for the status of a request id that cannot exist: costs nothing.

    The interpretation lives here only. Not-found (or 400/422) means the key got past auth;
    401/403 means fal refused it. Unverified against real fal: whether it checks the key
    before looking the id up. If it looked the id up first, a bad key would read as ok here.
    """
    host = queue_host()
    url = f"{request_base_url(endpoint)}/requests/{uuid.uuid4()}/status"
    try:
        response = httpx.get(url, headers={"Authorization": f"Key {key}"},
                             timeout=httpx.Timeout(timeout), follow_redirects=False)
    except httpx.TimeoutException:
        return ProbeVerdict(False, host, f"fal at {host} did not answer within {timeout:g}s",
                            "Check the network, or FAL_RUN_HOST/FAL_QUEUE_RUN_HOST.")
    except httpx.TransportError as e:
        return ProbeVerdict(False, host, f"cannot reach fal at {host}: {transport_reason(e)}",
                            "Check the network, FAL_RUN_HOST/FAL_QUEUE_RUN_HOST and "
                            "SSL_CERT_FILE.")
    code = response.status_code
    if code in {404, 400, 422}:
        return ProbeVerdict(True, host, f"{host} accepted the key from {key_source}")
    if code in {401, 403}:
        return ProbeVerdict(False, host, f"fal at {host} rejected the key from {key_source} "
                            f"({code})", f"Check {key_source}: is it a valid fal.ai key?")
    return ProbeVerdict(False, host, f"fal at {host} answered {code} to a status probe",
                        "fal may be having trouble; retry later.")
