"""Fault specs: how a test (or a user of `imagen4ctl emulator --fault`) breaks the emulator.

Grammar (whitespace is ignored, items are separated by `,` or `;`)::

    spec   := item (("," | ";") item)*
    item   := point "=" action ["x" COUNT]

    point      action                     effect
    ---------  -------------------------  --------------------------------------------------
    submit     CODE          e.g. 500     the app answers CODE with {"detail": ...} and an
    status                                x-fal-request-id header (fal_client retries only
    stream                                408/409/429 of these)
    result     ingressCODE   e.g. ingress503
    cancel                                nginx answers CODE (502/503/504) with an HTML body
    file                                  and no x-fal-request-id: fal_client retries it
    platform   malformed                  200 with a truncated JSON body (not for file; for
                                          stream: an answer that is not an event stream)
               drop                       the connection closes without a response
    submit     queued:ACTION e.g. queued:ingress502
                                          the request IS queued (it runs, and is billed),
                                          then its answer is replaced by ACTION (CODE,
                                          ingressCODE, drop or malformed): an answer lost
                                          on its way back, after fal accepted the request
    cancel     ignored                    answered 202 CANCELLATION_REQUESTED as usual, but
                                          a request already IN_PROGRESS runs on and
                                          completes with its images (its runner ignores the
                                          signal); a queued one is still removed
    stream     refuse                     404 {"detail": "Not Found"}: a host that does not
                                          serve the status stream
               cut                        the stream sends its first event, then the
                                          connection closes mid-stream (no COMPLETED)
    file       notimage                   image/png content type, HTML bytes
               slow:SECONDS               the real PNG, trickled over SECONDS
               large:SIZE    e.g. large:60MB
                                          a valid PNG header padded with zeros to SIZE bytes
    run        error[:ERROR_TYPE]         COMPLETED with error + error_type (default
                                          runner_disconnected); the result answers the
                                          matching HTTP error
               noimages                   a successful result with "images": []
               hang                       stays IN_PROGRESS for ever (cancel still works)
    latency    SECONDS       e.g. latency=5
                                          this request's own latency

`xCOUNT` (HTTP points only) makes a fault fire COUNT times, then the call succeeds: a
"429 storm" is `submit=429x3`, a result call that drops once and then works is
`result=dropx1`, an image URL that answers 503 once is `file=503x1`, a status stream cut once
and whole when opened again is `stream=cutx1`. Without it the fault fires on every call.

What each fault imitates, and where fal says so:

- Which answers fal_client 1.0.3 sends again by itself
  (https://pypi.org/project/fal-client/1.0.3/, fal_client/client.py, `_should_retry` and
  `_should_retry_response`, lines 1173-1211; `RETRY_CODES = [408, 409, 429]`,
  `INGRESS_ERROR_CODES = [502, 503, 504]`, lines 1140-1144): every transport error and
  timeout, 408/409/429, and a 502-504 that `_is_ingress_error` (lines 1156-1170) takes for
  nginx's: no `x-fal-request-id` header and "nginx" in the body. Hence `ingressCODE` has
  exactly that shape and an app CODE always carries the header.
- `queued:ACTION`: a retried submission has no idempotency key, so an answer lost after fal
  queued the request makes the retry a second request (fal_client 1.0.3 `SyncClient.submit`,
  client.py line 2374, sends its POST through `_maybe_retry_request`).
- `cancel=ignored`: "If the request is in the queue, fal removes it. If the request is in
  progress, fal sends a cancellation signal to the runner. The model app decides how to stop
  the work." (https://fal.ai/docs/inference-api/queue/cancel); "Without cancellation
  handling, a cancelled request continues consuming GPU time until it finishes naturally."
  (https://fal.ai/docs/documentation/development/handle-cancellations).
- `submit=429`: "Callers can optionally set `fal_max_queue_length` to reject requests with
  429 if the queue exceeds a threshold" (https://docs.fal.ai/documentation/deployment/requests):
  a 429 at submit queued nothing. Whether fal sends `Retry-After` with it is not documented.
- `stream=...`: fal's status stream (https://fal.ai/docs/inference-api/queue/status-stream)
  is a long-lived response: a proxy on the way may refuse it, answer it as a plain GET, or
  cut it, and a client must still learn the request's end.
- `run=error:TYPE`: fal's request error types and their HTTP codes
  (https://docs.fal.ai/documentation/model-apis/request-errors); the result of such a
  request "returns the same error" (https://fal.ai/docs/inference-api/queue/result).

Where a fault comes from:

- run-wide: `FalEmulator(faults=...)` or the `faults` attribute (a spec string);
- per request: `[fault:SPEC]` anywhere in the prompt (the stored prompt keeps it), or an
  `X-Emulator-Fault: SPEC` header on the submit. The header wins over the prompt, and both
  win over run-wide faults, point by point.

Counting: run-wide submit faults count over all submissions; prompt/header submit faults
count per distinct prompt + header, so fal_client's retries of one submission use them up;
the other points count per request id. Assigning `faults` or calling `reset()` restarts the
counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from imagen4ctl.durations import parse_size

HTTP_POINTS = ("submit", "status", "stream", "result", "cancel", "file", "platform")
POINTS = (*HTTP_POINTS, "run", "latency")

# Documented fal request error types and the HTTP status their result answers with
# (https://docs.fal.ai/documentation/model-apis/request-errors).
ERROR_TYPES: dict[str, tuple[int, str]] = {
    "request_timeout": (504, "Request timed out"),
    "startup_timeout": (504, "Runner did not start in time"),
    "runner_scheduling_failure": (503, "No runner could be allocated for the request"),
    "runner_connection_timeout": (503, "Connection to the runner timed out"),
    "runner_disconnected": (503, "Runner disconnected unexpectedly"),
    "runner_connection_refused": (503, "Runner refused the connection"),
    "internal_error": (500, "Internal server error"),
}
DEFAULT_ERROR_TYPE = "runner_disconnected"

_DIRECTIVE = re.compile(r"\[fault:([^\]]*)\]", re.IGNORECASE)
_ITEM = re.compile(r"(?P<point>[a-z]+)=(?P<action>.+?)(?:x(?P<times>\d+))?", re.IGNORECASE)
_CODE = re.compile(r"(?P<ingress>ingress)?(?P<code>[1-5]\d\d)", re.IGNORECASE)


class FaultSpecError(ValueError):
    """A fault spec that does not follow the grammar; the message says which part."""


@dataclass(frozen=True)
class Fault:
    point: str
    action: str  # http, ingress, malformed, drop, refuse, cut, notimage, slow, large, ...
    code: int | None = None
    seconds: float | None = None
    size: int | None = None
    error_type: str | None = None
    times: int | None = None  # None: every time
    queued: bool = False  # submit only: the request is queued before the fault answers

    def describe(self) -> str:
        """The fault back in spec form, for logs and the command's banner."""
        match self.action:
            case "http":
                action = str(self.code)
            case "ingress":
                action = f"ingress{self.code}"
            case "slow":
                action = f"slow:{self.seconds:g}"
            case "latency":
                action = f"{self.seconds:g}"
            case "large":
                action = f"large:{self.size}"
            case "error":
                action = f"error:{self.error_type}"
            case _:
                action = self.action
        suffix = f"x{self.times}" if self.times is not None else ""
        prefix = "queued:" if self.queued else ""
        return f"{self.point}={prefix}{action}{suffix}"


@dataclass(frozen=True)
class FaultPlan:
    """At most one fault per point; `merged` lets a more specific plan win point by point."""

    faults: tuple[Fault, ...] = ()

    def get(self, point: str) -> Fault | None:
        for fault in self.faults:
            if fault.point == point:
                return fault
        return None

    def merged(self, override: FaultPlan) -> FaultPlan:
        points = {fault.point for fault in override.faults}
        kept = tuple(fault for fault in self.faults if fault.point not in points)
        return FaultPlan(kept + override.faults)

    def describe(self) -> str:
        return ",".join(fault.describe() for fault in self.faults)

    def __bool__(self) -> bool:
        return bool(self.faults)


def _seconds(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultSpecError(f"{item!r}: {text!r} is not a number of seconds") from None
    if value < 0:
        raise FaultSpecError(f"{item!r}: seconds cannot be negative")
    return value


def _parse_action(point: str, action: str, item: str) -> Fault:
    lowered = action.lower()
    if point == "latency":
        return Fault(point, "latency", seconds=_seconds(action, item))
    if point == "run":
        if lowered in ("noimages", "hang"):
            return Fault(point, lowered)
        if lowered == "error" or lowered.startswith("error:"):
            error_type = action.partition(":")[2] or DEFAULT_ERROR_TYPE
            return Fault(point, "error", error_type=error_type)
        raise FaultSpecError(f"{item!r}: run takes error[:TYPE], noimages or hang")
    if point == "submit" and lowered.startswith("queued:"):
        lost = _parse_action(point, action[len("queued:"):], item)
        if lost.action not in ("http", "ingress", "drop", "malformed") or lost.queued:
            raise FaultSpecError(f"{item!r}: queued: takes CODE, ingressCODE, drop or malformed")
        return replace(lost, queued=True)
    if point == "cancel" and lowered == "ignored":
        return Fault(point, "ignored")
    if point == "stream" and lowered in ("refuse", "cut"):
        return Fault(point, lowered)
    code = _CODE.fullmatch(action)
    if code:
        kind = "ingress" if code["ingress"] else "http"
        status = int(code["code"])
        if status < 400 and kind == "http":
            raise FaultSpecError(f"{item!r}: an HTTP fault needs a code of 400 or more")
        return Fault(point, kind, code=status)
    if lowered == "drop" or (lowered == "malformed" and point != "file"):
        return Fault(point, lowered)
    if point == "file":
        if lowered == "notimage":
            return Fault(point, "notimage")
        name, _, value = action.partition(":")
        if name.lower() == "slow" and value:
            return Fault(point, "slow", seconds=_seconds(value, item))
        if name.lower() == "large" and value:
            try:
                return Fault(point, "large", size=parse_size(value))
            except ValueError as e:
                raise FaultSpecError(f"{item!r}: {e}") from None
    raise FaultSpecError(f"{item!r}: unknown action {action!r} for {point}")


def parse_faults(spec: str | None) -> FaultPlan:
    """The plan a spec string describes; raises FaultSpecError with the offending item."""
    if spec is None:
        return FaultPlan()
    faults: dict[str, Fault] = {}
    for raw in re.split(r"[,;]", spec):
        item = "".join(raw.split())
        if not item:
            continue
        match = _ITEM.fullmatch(item)
        if not match:
            raise FaultSpecError(f"{item!r}: expected POINT=ACTION, e.g. submit=429x3")
        point = match["point"].lower()
        if point not in POINTS:
            raise FaultSpecError(f"{item!r}: unknown point {point!r} (one of {', '.join(POINTS)})")
        fault = _parse_action(point, match["action"], item)
        if match["times"] is not None:
            if point not in HTTP_POINTS:
                raise FaultSpecError(f"{item!r}: only HTTP points take a count")
            fault = replace(fault, times=int(match["times"]))
        faults[point] = fault
    return FaultPlan(tuple(faults.values()))


def faults_in_prompt(prompt: str) -> FaultPlan:
    """Every `[fault:SPEC]` directive in a prompt, later ones winning point by point."""
    plan = FaultPlan()
    for directive in _DIRECTIVE.findall(prompt):
        plan = plan.merged(parse_faults(directive))
    return plan
