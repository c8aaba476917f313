"""What fal's queue answers mean for a paid request: accepted, refused, maybe accepted, or
the request's own verdict. The calls are in fal.py; the rules, with their sources, here.

- A submission is paid once fal has queued it, and fal_client 1.0.3 sends its POST again on
  answers that may follow a queued request (a lost answer, a timeout, 408/409/429, an nginx
  502-504: `_should_retry`, https://pypi.org/project/fal-client/1.0.3/ client.py lines
  1173-1211), with no idempotency key. So the POST goes out once, and every answer that may
  follow a queued request reads as "maybe queued": fix-pending looks for it at fal instead
  of paying again. Only a 429 says "not queued": "Callers can optionally set
  `fal_max_queue_length` to reject requests with 429 if the queue exceeds a threshold"
  (https://docs.fal.ai/documentation/deployment/requests). fal documents no `Retry-After`;
  it is honoured when sent.
- A result "has the status code, headers, and body that the model returned. If the model
  returned an error, this operation returns the same error"
  (https://fal.ai/docs/inference-api/queue/result): a 4xx there is the request's verdict,
  except 404 (the queue forgot it: fal keeps a result 1 hour, 6 minutes from 10 KB, same
  page) and 408/409/429; a 5xx says nothing certain, and fal bills no 5xx ("No charge for
  server errors", https://docs.fal.ai/model-apis/model-endpoints/reliability).
- A cancel answers CANCELLATION_REQUESTED (202), ALREADY_COMPLETED (400) or NOT_FOUND
  (https://fal.ai/docs/inference-api/queue/cancel, and "CANCELLATION_REQUESTED (202) or
  ALREADY_COMPLETED (400)", https://docs.fal.ai/documentation/deployment/requests). It is
  a request, not a fact: "If the request is in progress, fal sends a cancellation signal to
  the runner. The model app decides how to stop the work."
- A 403 "User is locked. Reason: …" to a submission is the account's lock, not the key: fal's
  users quote it with "A plain queue.fal.run/.../status GET returns 200, but ... all render
  calls return 403" (https://github.com/fal-ai/fal/issues/1147), and a new key did not clear
  it (https://github.com/fal-ai/fal/issues/1112). fal does not document it.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from imagen4ctl.errors import FalAccountLocked, FalRequestRejected, FalUnavailable

if TYPE_CHECKING:
    import httpx

SUBMIT_RETRIES_ON_429 = 3  # as fal-js's submissions (queue.ts, QUEUE_RETRY_CONFIG)
SUBMIT_BACKOFF = 0.5  # seconds before the first resend when fal gives no Retry-After; doubles
# fal_client resends these; fal does not say whether anything was queued before them.
_MAYBE_QUEUED = frozenset({408, 409})
FIX_PENDING_FINDS_IT = "`imagen4ctl fix-pending` finds it at fal instead of paying twice."


class FalSubmissionUnknown(FalUnavailable):
    """The submission may have reached fal, but its answer was lost: do not resubmit blindly."""


class FalNotFound(FalRequestRejected):
    """fal's queue does not know the request (any more): only its Platform API can say what
    became of it."""


class FalResultRefused(FalRequestRejected):
    """fal's answer for a finished request is its verdict, and it is no (the model's error,
    or no usable images): asking again cannot help."""


def maybe_queued(code: int) -> bool:
    """A submission answered `code` may still have been queued (and billed)."""
    return code in _MAYBE_QUEUED or code >= 500


def queued_request_id(response: httpx.Response) -> Any:
    """The request id in fal's answer to a submission; raises for every other answer: fal's
    own refusal (FalClientHTTPError, nothing was queued) or FalSubmissionUnknown."""
    from fal_client.client import _raise_for_status

    if maybe_queued(response.status_code):
        # nginx in front of fal answers without fal's request id header, and says "nginx"
        # (fal_client 1.0.3 `_is_ingress_error`, client.py lines 1156-1170).
        ingress = "x-fal-request-id" not in response.headers and "nginx" in response.text
        who = "fal's ingress" if ingress else "fal"
        raise FalSubmissionUnknown(f"{who} answered the submission with {response.status_code}; "
                                   "fal may have queued it", hint=FIX_PENDING_FINDS_IT)
    _raise_for_status(response)
    return response.json()["request_id"]


def resend_after(response: httpx.Response, attempt: int, remaining: float) -> float | None:
    """Seconds to wait before sending a submission fal refused with 429 once more (`attempt`
    counts from 0); None when its answer is final: not a 429, no resend left, or the wait
    would outlast the `remaining` seconds of the deadline."""
    if response.status_code != 429 or attempt >= SUBMIT_RETRIES_ON_429:
        return None
    pause = retry_after(response.headers.get("retry-after"), SUBMIT_BACKOFF * 2 ** attempt)
    return pause if pause < remaining else None


def retry_after(value: str | None, default: float, now: datetime | None = None) -> float:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP date), else `default`."""
    text = (value or "").strip()
    if not text:
        return default
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def result_is_verdict(code: int) -> bool:
    """A result answered `code` is the request's own (final) error."""
    return 400 <= code < 500 and code not in {401, 403, 404, 408, 409, 429}


def cancel_answer(response: httpx.Response) -> str | None:
    """The `status` fal's cancel answer names, if its body says one."""
    try:
        body = response.json()
    except ValueError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) else None


# fal's words for a locked account, on every submission while it lasts (status calls still
# work): "User is locked. Reason: Exhausted balance. Top up your balance at
# fal.ai/dashboard/billing." (fal-ai/fal issues 1112, 1147, 1163), "User is locked. Reason:
# TOP_UP." (1163), "User is locked. Reason: Admin lock. Please contact support@fal.ai" (1168).
LOCKED_PREFIX = "User is locked."
_BILLING = "https://fal.ai/dashboard/billing"


def account_locked(detail: str) -> FalAccountLocked:
    """fal's locked-account refusal as one line that says why and what helps."""
    reason = detail.removeprefix(LOCKED_PREFIX).strip().removeprefix("Reason:").strip()
    lowered = reason.lower()
    again = "run the command again (a new key does not help: the lock is on the account)."
    if lowered.startswith("admin lock"):
        return FalAccountLocked("fal account locked: admin lock — contact fal support",
                                hint=f"Write to support@fal.ai; once fal lifts the lock, {again}")
    if "balance" in lowered or "top_up" in lowered or "top up" in lowered:
        what = "exhausted balance" if "exhausted" in lowered else "top-up required"
        return FalAccountLocked(
            f"fal account locked: {what} — top up in fal's billing dashboard",
            hint=f"Top up at {_BILLING}, then {again} Locked with a positive balance: "
            "support@fal.ai lifts it.")
    shown = " ".join((reason or "no reason given").split())[:120]
    return FalAccountLocked(f"fal account locked: {shown}",
                            hint=f"See {_BILLING} or write to support@fal.ai; then {again}")
