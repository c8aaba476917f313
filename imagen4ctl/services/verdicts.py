"""After a submission, which failures end a generation and which only interrupt it.

fal is paid once it has queued a submission, so only fal's own verdict fails the row: the
request COMPLETED with an error, a result that is an error (422 and other 4xx: "If the model
returned an error, this operation returns the same error",
https://fal.ai/docs/inference-api/queue/result), a result without images, a file that is not
an image (or too large, or at a refused URL). Everything else may pass — a transport error,
a timeout, 429 or 5xx from fal, from its image host or from storage, and a result or image
fal's queue or CDN no longer has (404: its Platform API may still hold it) — so the row stays
in flight with its request id and that last error, and fix-pending finishes it later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagen4ctl.adapters.download import ImageGone, ImageRejected
from imagen4ctl.adapters.fal_answers import FalResultRefused
from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import FalError

if TYPE_CHECKING:
    from imagen4ctl.adapters.fal import FalAdapter

FIX_PENDING_HINT = ("Run `imagen4ctl fix-pending --apply`: it collects the images once fal "
                    "has them and the fault has passed.")


def is_verdict(error: FalError) -> bool:
    """fal's own, final no for this request (as opposed to a fault that may pass)."""
    return isinstance(error, FalResultRefused) or (
        isinstance(error, ImageRejected) and not isinstance(error, ImageGone))


def cancel_confirmed(fal: FalAdapter, endpoint: str, request_id: str) -> bool:
    """Cancel a request last seen IN_QUEUE; True only when fal confirms it ended unrun.

    fal removes a queued request, but one that began to run meanwhile only gets a signal, and
    "the model app decides how to stop the work" (https://fal.ai/docs/inference-api/queue/cancel):
    it may still finish, and be billed. fal documents no answer to the cancel that tells the
    two apart (CANCELLATION_REQUESTED, 202), so one status call decides: COMPLETED
    with an error is fal's confirmation; anything else (running, queued, completed, no answer)
    leaves the row in flight for fix-pending.
    """
    try:
        if fal.cancel(endpoint, request_id, Deadline(5.0)) in {"ALREADY_COMPLETED", "NOT_FOUND"}:
            return False
        status = fal.status(endpoint, request_id, Deadline(5.0))
    except FalError:
        return False
    return status.state == "COMPLETED" and status.error is not None
