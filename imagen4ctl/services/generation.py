"""The one generation service: generate, seed-gallery and fix-pending all go through it.

validate → preflight (key, schema, bucket: no row, nothing paid on failure) → row PENDING →
mark the submission attempt → submit → PROCESSING with the request id at once → wait →
stream each image into storage → COMPLETED; or FAILED with a one-line reason, when fal
says no (verdicts.py); or still PROCESSING, with its last error, when a fault that may pass
stopped it (fix-pending finishes it). Each state
change commits on its own and is conditional on the status it expects, because each must
survive a crash and must not overwrite another run's work (the exception to "the caller owns
the transaction").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from imagen4ctl.adapters.fal import FalAdapter, FalResult, FalStatus, FalSubmissionUnknown
from imagen4ctl.adapters.fal_answers import FalResultRefused
from imagen4ctl.db import generations
from imagen4ctl.db.values import COMPLETED, FAILED, IMAGEN4, PENDING, PROCESSING, utcnow
from imagen4ctl.deadline import Deadline
from imagen4ctl.endpoints import DEFAULT_ENDPOINT, ENDPOINTS, Endpoint, endpoint_named
from imagen4ctl.errors import (
    FalAccountLocked,
    FalCredentialsMissing,
    FalError,
    FalRequestRejected,
    GenerationFailed,
    GenerationPending,
    Imagen4ctlError,
    StorageError,
)
from imagen4ctl.keys import validate_user_id
from imagen4ctl.services.following import Following, Told
from imagen4ctl.services.images import MAX_UPLOADS, ImageStore, fal_sizes
from imagen4ctl.services.outcome import Outcome, Progress, ProgressCallback
from imagen4ctl.services.pacing import FalSlot
from imagen4ctl.services.verdicts import FIX_PENDING_HINT, cancel_confirmed, is_verdict
from imagen4ctl.settings import NO_FAL_KEY, Follow, crash_point

if TYPE_CHECKING:
    from imagen4ctl.adapters.storage import Storage
    from imagen4ctl.db.session import Database

# Rows a batch never sent after a locked-account refusal: FAILED, so no worker sends them.
NOT_SUBMITTED_LOCKED = "not submitted: account locked"


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate, validated on construction: a bad value never reaches a row."""

    user_id: str
    prompt: str
    aspect_ratio: str = ENDPOINTS[DEFAULT_ENDPOINT].default_aspect_ratio
    num_images: int = ENDPOINTS[DEFAULT_ENDPOINT].default_num_images
    seed: int | None = None
    negative_prompt: str | None = None
    resolution: str | None = None
    kind: str = IMAGEN4
    model: str | None = None  # the fal endpoint id; None: the service's (IMAGEN4_MODEL)

    def __post_init__(self) -> None:
        validate_user_id(self.user_id)
        self.endpoint.check(**self._input())

    @property
    def endpoint(self) -> Endpoint:
        """The rules a spec is held to: its endpoint's (an unknown id is a usage error)."""
        return endpoint_named(self.model or DEFAULT_ENDPOINT)

    def arguments(self) -> dict[str, Any]:
        """fal's Imagen 4 input."""
        return self.endpoint.arguments(**self._input())

    def _input(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "aspect_ratio": self.aspect_ratio,
                "num_images": self.num_images, "seed": self.seed,
                "negative_prompt": self.negative_prompt, "resolution": self.resolution}


class GenerationService:
    def __init__(
        self,
        database: Database,
        storage: Storage,
        fal: FalAdapter | None,
        *,
        model: str,
        prefix: str,
        max_image_bytes: int,
        trusted_hosts: frozenset[str] = frozenset(),
        follow: Follow | Told = "auto",  # fal's status stream, or polling; or its webhook
        poll_interval: float = 0.1,  # fal_client's own subscribe polls every 0.1 s
    ) -> None:
        self.database = database
        self.storage = storage
        self.fal = fal
        self.model = model
        self.prefix = prefix
        self.max_image_bytes = max_image_bytes
        self.trusted_hosts = trusted_hosts
        self.follow: Follow | Told = follow
        self.poll_interval = poll_interval
        # MAX_UPLOADS is read here, at construction, so that bench/memory.py can try others.
        self.images = ImageStore(storage, prefix=prefix, max_image_bytes=max_image_bytes,
                                 trusted_hosts=trusted_hosts, uploads=MAX_UPLOADS)

    # --- preflight and rows ---

    def require_fal(self, spared: str = "nothing was written") -> FalAdapter:
        """The one place where a missing fal key becomes an error; `spared` tells the user
        what was left alone because of it."""
        if self.fal is None:
            raise FalCredentialsMissing(
                f"{NO_FAL_KEY} ({spared})",
                hint="Set FAL_KEY (or FAL_API_KEY); see `imagen4ctl check-config`.",
            )
        return self.fal

    def preflight(self) -> FalAdapter:
        """What can be checked cheaply before a row is written and anything is paid."""
        from imagen4ctl.db.migrate import require_current

        fal = self.require_fal()
        require_current(self.database)
        self.storage.create_if_missing()  # IMAGES_DIR on first use; a bucket never
        if not self.storage.bucket_exists():
            raise StorageError(f"{self.storage.describe()} does not exist (nothing was written)",
                               hint="Create it, or set MINIO_BUCKET / IMAGES_DIR.")
        return fal

    def bound(self, spec: GenerationSpec) -> GenerationSpec:
        """`spec` sent to IMAGEN4_MODEL unless it names an endpoint, and held to its rules."""
        if spec.model is not None:
            return spec
        endpoint_named(self.model, source="IMAGEN4_MODEL")
        return replace(spec, model=self.model)

    def _new_row(self, spec: GenerationSpec) -> generations.NewGeneration:
        """A PENDING row for `spec`, recording the endpoint it goes to."""
        spec = self.bound(spec)
        return generations.NewGeneration(spec.user_id, spec.kind, spec.prompt,
                                         spec.aspect_ratio, fal_endpoint=spec.model,
                                         params=_row_params(spec))

    def create(self, spec: GenerationSpec) -> int:
        return self.create_many([spec])[0]

    def create_many(self, specs: Sequence[GenerationSpec]) -> list[int]:
        """PENDING rows for `specs`, in order, with one commit: on SQLite each commit costs
        several fsyncs, and a batch of 100 waited ~2 s for its rows one by one."""
        return generations.insert_many(self.database, [self._new_row(s) for s in specs])

    def _update(self, generation_id: int, expected: Sequence[str], **values: Any) -> bool:
        """One committed, conditional state change; False when the row moved on meanwhile."""
        return generations.change_state(self.database, generation_id, expected, **values)

    def _fail(self, outcome: Outcome, reason: str, expected: Sequence[str]) -> None:
        reason = " ".join(reason.split())[:500]
        self._update(outcome.id or 0, expected, status=FAILED, error=reason)
        outcome.status, outcome.error = FAILED, reason

    # --- the whole path ---

    def generate(
        self,
        spec: GenerationSpec,
        deadline: Deadline,
        *,
        wait: bool = True,
        on_progress: ProgressCallback | None = None,
    ) -> Outcome:
        """Generate one spec end to end. Raises only before the row exists (preflight)."""
        self.preflight()
        generation_id = self.create(spec)
        return self.run(generation_id, spec, deadline, wait=wait, on_progress=on_progress)

    def run(
        self,
        generation_id: int,
        spec: GenerationSpec,
        deadline: Deadline,
        *,
        wait: bool = True,
        on_progress: ProgressCallback | None = None,
        slot: FalSlot | None = None,
        account_locked: threading.Event | None = None,
        hand_back_unsent: bool = False,
    ) -> Outcome:
        """Submit the PENDING row `generation_id` and see it through (after `preflight`).

        Never raises for fal or storage trouble: the outcome, and the row, say what happened.
        A batch's `slot` is released as soon as fal reports the final status (or the
        generation stops earlier), before the images are stored. The first locked-account
        refusal sets `account_locked`: the batch's later rows are then not submitted.
        With `hand_back_unsent` (the worker), a submission fal never took (unreachable, rate
        limiting, the key or the account refused) leaves the row queued instead of FAILED:
        a dependency that is down fails no row."""
        fal = self.require_fal()
        started = time.monotonic()
        outcome = Outcome(generation_id, spec.user_id, PENDING, prompt=spec.prompt,
                          aspect_ratio=spec.aspect_ratio)
        notify = on_progress or (lambda _p: None)
        endpoint = spec.model or self.model
        try:
            if account_locked is not None and account_locked.is_set():
                self._fail(outcome, NOT_SUBMITTED_LOCKED, [PENDING])
                outcome.exception = GenerationFailed(f"generation {generation_id} "
                                                     + NOT_SUBMITTED_LOCKED)
                return outcome
            notify(Progress(generation_id, "submitting"))
            self._update(generation_id, [PENDING], submit_started_at=utcnow())
            crash_point("before_submit")
            try:
                submission = fal.submit(endpoint, spec.arguments(), deadline)
            except FalSubmissionUnknown as e:
                self._update(generation_id, [PENDING], error=f"submission state unknown: "
                             f"{e.message}")
                outcome.error = f"submission state unknown: {e.message}"
                outcome.exception = GenerationPending(outcome.error, hint=e.hint)
                return outcome
            except FalAccountLocked as e:  # every further submission would be refused too
                if account_locked is not None:
                    account_locked.set()  # before the slot lets the next one go
                if hand_back_unsent:
                    return self._hand_back(outcome, e)
                self._fail(outcome, e.message, [PENDING])
                outcome.exception = e
                return outcome
            except FalError as e:
                # fal refused or was never reached: nothing is running there, nothing billed.
                if hand_back_unsent and not isinstance(e, FalRequestRejected):
                    return self._hand_back(outcome, e)
                self._fail(outcome, e.message, [PENDING])
                outcome.exception = _with_hint(GenerationFailed(e.message), e)
                return outcome
            request_id = submission.request_id
            if slot is not None:
                slot.submitted()
            crash_point("after_submit")
            generations.record_submission(self.database, generation_id, request_id)
            outcome.status, outcome.fal_request_id = PROCESSING, request_id
            notify(Progress(generation_id, "submitted", request_id))
            if not wait:
                return outcome
            self.images.prepare()
            self._collect(outcome, endpoint, request_id, spec, deadline, notify,
                          submission.sent_at, slot)
            return outcome
        except KeyboardInterrupt:
            outcome.error = "interrupted"
            hint = FIX_PENDING_HINT if outcome.fal_request_id else None
            if outcome.fal_request_id:  # handed over: fix-pending takes it at once
                self._update(generation_id, [PROCESSING], error="interrupted")
            outcome.exception = GenerationPending(
                "interrupted; the row stays " + outcome.status, hint=hint)
            return outcome
        finally:
            if slot is not None:
                slot.release()
            outcome.seconds = time.monotonic() - started

    def _hand_back(self, outcome: Outcome, error: FalError) -> Outcome:
        """fal took nothing: the row is queued again (no attempt mark, no error) for a later
        submission, and the outcome keeps fal's error for the caller to wait on."""
        self._update(outcome.id or 0, [PENDING], submit_started_at=None, error=None)
        outcome.error, outcome.exception = error.message, error
        return outcome

    def _collect(
        self,
        outcome: Outcome,
        endpoint: str,
        request_id: str,
        spec: GenerationSpec,
        deadline: Deadline,
        notify: ProgressCallback,
        submitted: float,
        slot: FalSlot | None,
    ) -> None:
        """Wait for fal, then store the images; the row ends COMPLETED, FAILED or PROCESSING."""
        assert outcome.id is not None and self.fal is not None
        status = self._wait(outcome, endpoint, request_id, deadline, notify, submitted)
        if slot is not None:
            slot.release()  # fal has answered (or we stopped waiting): the next may go
        if status is not None:
            self.settle(outcome, endpoint, _row_params(spec), deadline, error=status.error,
                        result=status.result, notify=notify)

    def settle(self, outcome: Outcome, endpoint: str, params: dict[str, Any],
               deadline: Deadline, *, error: str | None = None, result: FalResult | None = None,
               notify: ProgressCallback | None = None) -> None:
        """fal's verdict on the finished request `outcome.fal_request_id` into its row: FAILED
        with fal's `error`, or the images of `result` (asked for when None) stored, COMPLETED;
        a fault that may pass leaves it PROCESSING. Polling, the stream and webhooks end here."""
        assert outcome.id is not None and outcome.fal_request_id is not None
        notify = notify or (lambda _p: None)
        if error:
            self._fail(outcome, f"fal: {error}", [PROCESSING, PENDING])
            outcome.exception = GenerationFailed(f"generation {outcome.id} failed at fal: "
                                                 f"{error}")
            return
        try:
            if result is None:
                result = self.require_fal().result(endpoint, outcome.fal_request_id, deadline)
            if not result.images:
                raise FalResultRefused("fal returned no images")
        except FalError as e:
            self._stop(outcome, e, "result", "its result could not be fetched")
            return
        notify(Progress(outcome.id, "downloading", f"{len(result.images)} image(s)"))
        try:
            outcome.images = self.images.store(outcome.id, outcome.user_id,
                                               [i.url for i in result.images], deadline)
        except FalError as e:  # the image host's; storage's are StorageError
            self._stop(outcome, e, "download", "its images could not be downloaded")
            return
        except StorageError as e:
            # fal has the result; the row stays PROCESSING so fix-pending can still copy it.
            self._update(outcome.id, [PROCESSING], error=f"storage: {e.message}")
            outcome.error = e.message
            outcome.exception = StorageError(
                f"generation {outcome.id} finished at fal but storing it failed: {e.message}",
                hint=(e.hint or "Fix storage") + "; then `imagen4ctl fix-pending` copies it.")
            return
        keys = [image.key for image in outcome.images]
        crash_point("stored")
        if self._update(outcome.id, [PROCESSING, PENDING], status=COMPLETED, result_urls=keys,
                        completed_at=utcnow(), error=None, **fal_sizes(params, result.images)):
            outcome.status, outcome.error = COMPLETED, None
            notify(Progress(outcome.id, "completed"))
        else:
            outcome.exception = GenerationFailed(
                f"generation {outcome.id} changed state while it was being stored")

    def _wait(
        self,
        outcome: Outcome,
        endpoint: str,
        request_id: str,
        deadline: Deadline,
        notify: ProgressCallback,
        submitted: float,
    ) -> FalStatus | None:
        """fal's final status, or None when the deadline came first (the row says what next).

        Followed through fal's status stream, or by polling when it cannot be had
        (following.py); `submitted` is when the submission had left (monotonic clock).
        """
        assert outcome.id is not None and self.fal is not None
        last = FalStatus("IN_QUEUE")  # fal answers a submission IN_QUEUE
        notify(Progress(outcome.id, "queued"))
        following = Following(self.fal, endpoint, request_id, deadline, submitted=submitted,
                              mode=self.follow, interval=self.poll_interval)
        seen_logs = 0
        try:
            with closing(iter(following)) as statuses:
                for status in statuses:
                    last = status
                    if status.state == "COMPLETED":
                        return status
                    if status.state == "IN_QUEUE":
                        crash_point("queued")
                        notify(Progress(outcome.id, "queued",
                                        queue_position=status.queue_position))
                    else:
                        crash_point("running")
                        new_logs = status.logs[seen_logs:]
                        seen_logs = len(status.logs)
                        notify(Progress(outcome.id, "running", new_logs[-1] if new_logs else ""))
        except FalError as e:  # even a 404: fix-pending asks fal's Platform API first
            self._leave(outcome, f"{following.step}: {e.message}", "lost contact with fal "
                        f"while waiting for generation {outcome.id}: {e.message}")
            return None
        finally:
            outcome.followed = following.how
        self._give_up(outcome, endpoint, request_id, last, deadline)
        return None

    def _give_up(
        self,
        outcome: Outcome,
        endpoint: str,
        request_id: str,
        last: FalStatus,
        deadline: Deadline,
    ) -> None:
        """The deadline came: a queued request is cancelled, FAILED once fal confirms it ended
        unrun; one that runs, or may have begun to, is left to fix-pending (verdicts.py)."""
        assert outcome.id is not None and self.fal is not None
        after = f"{deadline.seconds or 0:g}s"
        if last.state != "IN_QUEUE":
            self._leave(outcome, f"still running at fal after {after}",
                        f"generation {outcome.id} is still running at fal after {after}")
        elif cancel_confirmed(self.fal, endpoint, request_id):
            reason = "timed out in queue, cancelled before it ran"
            self._fail(outcome, reason, [PROCESSING, PENDING])
            outcome.exception = GenerationFailed(
                f"generation {outcome.id} {reason} after {after}",
                hint="Raise --timeout; fal's queue may be long right now.")
        else:
            self._leave(outcome, f"cancel requested after {after} in fal's queue; fal may "
                        "still run it", f"generation {outcome.id} timed out in fal's queue "
                        f"after {after}; a cancel was requested, but fal may still run it")

    def _stop(self, outcome: Outcome, error: FalError, step: str, failure: str) -> None:
        """fal's own verdict fails the row; any other error leaves it to fix-pending."""
        if is_verdict(error):
            self._fail(outcome, error.message, [PROCESSING, PENDING])
            outcome.exception = GenerationFailed(f"generation {outcome.id}: {error.message}")
        else:
            self._leave(outcome, f"{step}: {error.message}", f"generation {outcome.id} finished "
                        f"at fal but {failure}: {error.message}")

    def _leave(self, outcome: Outcome, error: str, message: str) -> None:
        """The row stays PROCESSING, `error` its last error (fix-pending takes it at once)."""
        outcome.error = " ".join(error.split())[:500]
        self._update(outcome.id or 0, [PROCESSING], error=outcome.error)
        outcome.exception = GenerationPending(f"{message}; the row stays PROCESSING",
                                              hint=FIX_PENDING_HINT)

    # --- batches ---

    def run_batch(
        self,
        specs: Sequence[GenerationSpec],
        *,
        concurrency: int,
        timeout: float,
        unique: bool = False,
        on_progress: ProgressCallback | None = None,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> list[Outcome]:
        """Generate many specs with at most `concurrency` in flight at fal; each has its own
        deadline, from when it gets a place there.

        A generation holds its place (`FalSlot`) from submission until fal reports the final
        status; fetching, downloading and storing its images overlap the next submission, on
        twice as many threads as places so that a free place never waits for a thread.
        Rows are created up front (cheap, and a crash leaves them visible to fix-pending).
        With `unique`, a (user, prompt, ratio) that already has a row COMPLETED or in flight
        is not created again, even by runs started at the same time.
        """
        self.preflight()
        if unique:
            created = self.create_unique(specs)
        else:
            created = list(zip(self.create_many(specs), specs, strict=True))

        places = threading.BoundedSemaphore(max(1, concurrency))
        # The first submission goes out alone: the fal client, its TLS context and its first
        # connection are made once, not by a whole first wave contending for them.
        first_answered = threading.Event()
        account_locked = threading.Event()

        def one(pair: tuple[int, GenerationSpec]) -> Outcome:
            generation_id, spec = pair
            first = pair is created[0]
            if not first:
                first_answered.wait()
            slot = FalSlot(places, first_answered if first else None)
            outcome = self.run(generation_id, spec, Deadline(timeout), on_progress=on_progress,
                               slot=slot, account_locked=account_locked)
            if on_done is not None:
                on_done(outcome)
            return outcome

        with ThreadPoolExecutor(max_workers=2 * max(1, concurrency)) as pool:
            return list(pool.map(one, created))

    def create_unique(self, specs: Sequence[GenerationSpec]) -> list[tuple[int, GenerationSpec]]:
        """Insert rows for the specs whose (user, kind, prompt, ratio) has no COMPLETED or
        in-flight row yet, in one transaction that concurrent runs serialize on."""
        ids = generations.insert_new(self.database, [self._new_row(s) for s in specs])
        return [(id_, spec) for id_, spec in zip(ids, specs, strict=True) if id_ is not None]

    def existing_pairs(self, user_id: str, kind: str = IMAGEN4) -> set[tuple[str, str | None]]:
        """(prompt, aspect ratio) pairs this user has COMPLETED or in flight: seeding skips them."""
        return generations.taken_pairs(self.database, user_id, kind)


def _row_params(spec: GenerationSpec) -> dict[str, Any]:
    """The row's `params`: fal's input but the prompt and ratio, which have columns."""
    return {k: v for k, v in spec.arguments().items() if k not in {"prompt", "aspect_ratio"}}


def _with_hint(error: Imagen4ctlError, cause: Imagen4ctlError) -> Imagen4ctlError:
    error.hint = cause.hint
    return error
