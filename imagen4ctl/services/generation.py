"""The one generation service: generate, seed-gallery and fix-pending all go through it.

validate → preflight (key, schema, bucket: no row, nothing paid on failure) → row PENDING →
mark the submission attempt → submit → PROCESSING with the request id at once → wait →
stream each image into storage → COMPLETED; or FAILED with a one-line reason. Each state
change commits on its own and is conditional on the status it expects, because each must
survive a crash and must not overwrite another run's work (the exception to "the caller owns
the transaction").
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from imagen4ctl.adapters.download import (
    ImageRejected,
    download_client,
    load_image_support,
    open_image,
)
from imagen4ctl.adapters.fal import (
    Deadline,
    FalAdapter,
    FalStatus,
    FalSubmissionUnknown,
    FalTimeout,
)
from imagen4ctl.db.values import (
    COMPLETED,
    FAILED,
    IMAGEN4,
    IN_FLIGHT,
    PENDING,
    PROCESSING,
    sql_list,
    utcnow,
)
from imagen4ctl.db.writer import Writer, in_list
from imagen4ctl.errors import (
    FalCredentialsMissing,
    FalError,
    FalRequestRejected,
    GenerationFailed,
    GenerationPending,
    Imagen4ctlError,
    StorageError,
    UsageError,
)
from imagen4ctl.keys import object_key, validate_user_id
from imagen4ctl.settings import crash_point

if TYPE_CHECKING:
    import httpx

    from imagen4ctl.adapters.storage import Storage
    from imagen4ctl.db.session import Database

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "3:4", "4:3")
RESOLUTIONS = ("1K", "2K")
MAX_PROMPT_CHARS = 4000
LINK_EXPIRY = timedelta(hours=1)
FIX_PENDING_HINT = "`imagen4ctl fix-pending` will collect it."
# An S3 upload holds up to a whole image in memory (minio buffers a part, and the previous one
# while it reads the last). Uploads run on this many threads of their own, whatever
# --concurrency: glibc keeps such buffers in the arena of the thread that freed them, so
# uploads spread over 16 threads kept ~16 images resident even with fewer in flight.
MAX_UPLOADS = 8
# A (user, prompt, ratio) with such a row is not generated again by seeding: done or on its way.
_TAKEN = f"status IN {sql_list((COMPLETED, *IN_FLIGHT))}"
# The columns a state change may set (they are named in the SQL, never taken from input).
_UPDATABLE = frozenset({
    "status", "fal_request_id", "result_urls", "error", "updated_at", "submit_started_at",
    "submitted_at", "completed_at",
})


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate, validated on construction: a bad value never reaches a row."""

    user_id: str
    prompt: str
    aspect_ratio: str = "1:1"
    num_images: int = 1
    seed: int | None = None
    negative_prompt: str | None = None
    resolution: str | None = None
    kind: str = IMAGEN4

    def __post_init__(self) -> None:
        validate_user_id(self.user_id)
        validate_prompt(self.prompt)
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise UsageError(f"aspect ratio {self.aspect_ratio!r} is not one of "
                             f"{', '.join(ASPECT_RATIOS)}")
        if not 1 <= self.num_images <= 4:
            raise UsageError(f"--num-images must be 1 to 4, not {self.num_images}")
        if self.resolution is not None and self.resolution not in RESOLUTIONS:
            raise UsageError(f"resolution {self.resolution!r} is not one of 1K, 2K")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise UsageError(f"seed must be between 0 and {2**32 - 1}")
        if self.negative_prompt is not None:
            validate_prompt(self.negative_prompt, what="negative prompt")

    def arguments(self) -> dict[str, Any]:
        """fal's Imagen 4 input."""
        args: dict[str, Any] = {"prompt": self.prompt, "aspect_ratio": self.aspect_ratio,
                                "num_images": self.num_images}
        optional = {"seed": self.seed, "negative_prompt": self.negative_prompt,
                    "resolution": self.resolution}
        args.update({k: v for k, v in optional.items() if v is not None})
        return args


def validate_prompt(prompt: str, *, what: str = "prompt") -> str:
    if not prompt.strip():
        raise UsageError(f"the {what} is empty")
    if "\x00" in prompt:
        raise UsageError(f"the {what} contains a NUL character")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UsageError(f"the {what} has {len(prompt):,} characters; the limit is "
                         f"{MAX_PROMPT_CHARS:,}")
    return prompt


@dataclass(frozen=True)
class StoredImage:
    key: str
    url: str
    width: int | None
    height: int | None
    content_type: str
    size: int


@dataclass
class Outcome:
    """How one generation ended (or where it stopped): the JSON of `generate`."""

    id: int | None
    user_id: str
    status: str
    fal_request_id: str | None = None
    images: list[StoredImage] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    prompt: str = ""
    aspect_ratio: str | None = None
    exception: Imagen4ctlError | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "user_id": self.user_id, "status": self.status,
            "fal_request_id": self.fal_request_id,
            "images": [asdict(i) for i in self.images],
            "error": self.error, "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Progress:
    """What a generation is doing now, for a live status line."""

    generation_id: int
    phase: str  # submitting, queued, running, downloading, stored, completed, failed, pending
    detail: str = ""
    queue_position: int | None = None


ProgressCallback = Callable[[Progress], None]


class FalSlot:
    """One of a batch's `--concurrency` places at fal, held from submission until fal reports
    the final status: the result is then fetched and stored while the next generation runs.

    Taken (waiting for a free place) on construction; `release` gives it back once, however
    often it is called, so every path of `GenerationService.run` can call it.
    """

    def __init__(self, places: threading.Semaphore,
                 submitted: threading.Event | None = None) -> None:
        places.acquire()
        self._places = places
        self._lock = threading.Lock()
        self._held = True
        self._submitted = submitted

    def submitted(self) -> None:
        """fal has answered the submission (or it failed): sets the event given, if any."""
        if self._submitted is not None:
            self._submitted.set()

    def release(self) -> None:
        self.submitted()
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._places.release()


class PollSchedule:
    """When to ask fal for a status again: every `interval` (fal_client's own 0.1 s), but at
    the moment this run's finished requests to the same endpoint say a request is done.

    Each finished request was seen unfinished at one time and COMPLETED by another (seconds
    after its submission); the last `keep` of those intervals per endpoint are kept.

    - When they overlap (one latency explains them all, as with a model of steady speed), a
      request is done by the earliest COMPLETED time among them, `hi`: it is asked once then,
      then every `dense` seconds for `half_window`, then every `interval` again.
    - When they do not (Imagen 4's latency varies by seconds), polls are dense only in a
      window of ± `half_window` around the median of their midpoints.

    Either way a generation pays at most a few extra calls however late it completes. A
    completion recorded while requests sleep re-plans them: one whose last call went out
    before the time a request is due (`hi`, or the median), and that is past it, asks at
    once (a batch's first wave is submitted together and finishes together). Thread-safe:
    one schedule serves all generations of a run.
    """

    def __init__(self, *, dense: float = 0.01, half_window: float = 0.03, keep: int = 16) -> None:
        self.dense = dense
        self.half_window = half_window
        self._keep = keep
        self._recorded = threading.Condition()
        self._completions: dict[str, deque[tuple[float, float]]] = {}

    def record(self, endpoint: str, unfinished_at: float, completed_at: float) -> None:
        """A request seen unfinished at `unfinished_at` and COMPLETED by `completed_at`
        (seconds after its submission)."""
        with self._recorded:
            times = self._completions.setdefault(endpoint, deque(maxlen=self._keep))
            times.append((unfinished_at, completed_at))
            self._recorded.notify_all()

    def expected(self, endpoint: str) -> float | None:
        """When a request is expected to complete, seconds after its submission."""
        with self._recorded:
            window = self._window(endpoint)
        return None if window is None else (window[0] + window[1]) / 2

    def delay(self, endpoint: str, elapsed: float, interval: float,
              asked: float | None = None) -> float:
        """Seconds to wait before the next status call, `elapsed` seconds after submission;
        `asked`: when the last call went out."""
        with self._recorded:
            return self._delay(endpoint, elapsed, interval, asked)

    def sleep(self, endpoint: str, submitted: float, interval: float, delay: float,
              asked: float | None = None) -> None:
        """Sleep `delay` seconds, or less when a completion recorded meanwhile says the request
        is due sooner; `submitted` is the request's submission time (monotonic clock) and
        `asked` when its last status call went out (seconds after submission)."""
        wake = time.monotonic() + delay
        with self._recorded:
            while (remaining := wake - time.monotonic()) > 0:
                if self._recorded.wait(remaining):
                    now = time.monotonic()
                    wake = min(wake, now + self._delay(endpoint, now - submitted, interval,
                                                       asked))

    def _window(self, endpoint: str) -> tuple[float, float, bool] | None:
        """(from, to, whether one latency explains every recorded completion)."""
        times = self._completions.get(endpoint)
        if not times:
            return None
        lo, hi = max(t[0] for t in times), min(t[1] for t in times)
        if lo < hi:
            return lo, hi, True
        middle = statistics.median((a + b) / 2 for a, b in times)
        return middle - self.half_window, middle + self.half_window, False

    def _delay(self, endpoint: str, elapsed: float, interval: float,
               asked: float | None = None) -> float:
        window = self._window(endpoint)
        if window is None:
            return interval
        lo, hi, steady = window
        due = hi if steady else (lo + hi) / 2
        if asked is not None and asked < due <= elapsed:
            return 0.0  # due since its last call: ask now
        if steady:
            if elapsed < hi:
                return min(interval, hi - elapsed)  # asked once when it is due
            return min(self.dense, interval) if elapsed < hi + self.half_window else interval
        if elapsed >= hi:
            return interval
        if elapsed >= lo:
            return min(self.dense, interval)
        return min(interval, lo - elapsed)  # wake up at the window's start


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
        poll_interval: float = 0.1,  # fal_client's own subscribe polls every 0.1 s
    ) -> None:
        self.database = database
        self.storage = storage
        self.fal = fal
        self.model = model
        self.prefix = prefix
        self.max_image_bytes = max_image_bytes
        self.trusted_hosts = trusted_hosts
        self.poll_interval = poll_interval
        self._uploads = ThreadPoolExecutor(max_workers=MAX_UPLOADS,
                                           thread_name_prefix="upload")
        self._polls = PollSchedule()
        self._download_client: httpx.Client | None = None
        self._download_lock = threading.Lock()
        self._prepared = False

    def _downloads(self) -> httpx.Client:
        """One client for this run's image downloads: the CA bundle loads once, and
        connections to fal's file host are reused."""
        with self._download_lock:
            if self._download_client is None:
                self._download_client = download_client()
            return self._download_client

    def _prepare_storing(self) -> None:
        """Once, on a thread of its own: load what storing an image needs (Pillow, the
        download client) while the first generations are at fal. Left to the first image, it
        ran when a whole batch's first wave finished at once and delayed every status call."""
        with self._download_lock:
            if self._prepared:
                return
            self._prepared = True

        def prepare() -> None:
            load_image_support()
            self._downloads()

        threading.Thread(target=prepare, name="prepare-storing", daemon=True).start()

    # --- preflight and rows ---

    def _require_fal(self) -> FalAdapter:
        if self.fal is None:
            raise FalCredentialsMissing(
                "no fal key: FAL_KEY is not set (nothing was written)",
                hint="Set FAL_KEY (or FAL_API_KEY); see `imagen4ctl check-config`.",
            )
        return self.fal

    def preflight(self) -> FalAdapter:
        """What can be checked cheaply before a row is written and anything is paid."""
        from imagen4ctl.adapters.storage import LocalStorage
        from imagen4ctl.db.migrate import require_current

        fal = self._require_fal()
        require_current(self.database)
        if isinstance(self.storage, LocalStorage) and not self.storage.bucket_exists():
            try:
                self.storage.root.mkdir(parents=True, exist_ok=True)  # IMAGES_DIR on first use
            except OSError as e:
                raise StorageError(f"cannot create {self.storage.describe()}: {e.strerror}",
                                   hint="Point IMAGES_DIR at a writable folder.") from e
        if not self.storage.bucket_exists():
            raise StorageError(f"{self.storage.describe()} does not exist (nothing was written)",
                               hint="Create it, or set MINIO_BUCKET / IMAGES_DIR.")
        return fal

    def _insert(self, db: Writer, spec: GenerationSpec) -> int:
        """A PENDING row for `spec`; its id."""
        params = {k: v for k, v in spec.arguments().items() if k not in {"prompt",
                                                                          "aspect_ratio"}}
        now = utcnow()
        return int(db.value(
            "INSERT INTO generations (user_id, kind, status, prompt, aspect_ratio, "
            "fal_endpoint, params, created_at, updated_at) VALUES (:user_id, :kind, "
            ":status, :prompt, :aspect_ratio, :fal_endpoint, :params, :now, :now) "
            "RETURNING id",
            user_id=spec.user_id, kind=spec.kind, status=PENDING, prompt=spec.prompt,
            aspect_ratio=spec.aspect_ratio, fal_endpoint=self.model,
            params=params, now=now))

    def create(self, spec: GenerationSpec) -> int:
        return self.create_many([spec])[0]

    def create_many(self, specs: Sequence[GenerationSpec]) -> list[int]:
        """PENDING rows for `specs`, in order, with one commit: on SQLite each commit costs
        several fsyncs, and a batch of 100 waited ~2 s for its rows one by one."""
        with self.database.write() as db:
            return [self._insert(db, spec) for spec in specs]

    def _update(self, generation_id: int, expected: Sequence[str], **values: Any) -> bool:
        """One committed, conditional state change; False when the row moved on meanwhile."""
        values.setdefault("updated_at", utcnow())
        unknown = values.keys() - _UPDATABLE
        assert not unknown, f"not a column imagen4ctl updates: {sorted(unknown)}"
        states, state_params = in_list("state", expected)
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        with self.database.write() as db:
            return db.execute(
                f"UPDATE generations SET {assignments} "  # noqa: S608 (names from _UPDATABLE)
                f"WHERE id = :generation_id AND status IN {states}",
                generation_id=generation_id, **state_params, **values) > 0

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
    ) -> Outcome:
        """Submit the PENDING row `generation_id` and see it through (after `preflight`).

        Never raises for fal or storage trouble: the outcome, and the row, say what happened.
        A batch's `slot` is released as soon as fal reports the final status (or the
        generation stops earlier), before the images are stored.
        """
        fal = self._require_fal()
        started = time.monotonic()
        outcome = Outcome(generation_id, spec.user_id, PENDING, prompt=spec.prompt,
                          aspect_ratio=spec.aspect_ratio)
        notify = on_progress or (lambda _p: None)
        endpoint = self.model
        try:
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
            except FalError as e:
                # fal refused or was never reached: nothing is running there, nothing billed.
                self._fail(outcome, e.message, [PENDING])
                outcome.exception = _with_hint(GenerationFailed(e.message), e)
                return outcome
            request_id = submission.request_id
            if slot is not None:
                slot.submitted()
            crash_point("after_submit")
            self._record_submission(generation_id, request_id)
            outcome.status, outcome.fal_request_id = PROCESSING, request_id
            if not wait:
                return outcome
            self._prepare_storing()
            self._collect(outcome, endpoint, request_id, spec.user_id, deadline, notify,
                          submission.sent_at, slot)
            return outcome
        except KeyboardInterrupt:
            outcome.error = "interrupted"
            hint = FIX_PENDING_HINT if outcome.fal_request_id else None
            outcome.exception = GenerationPending(
                "interrupted; the row stays " + outcome.status, hint=hint)
            return outcome
        finally:
            if slot is not None:
                slot.release()
            outcome.seconds = time.monotonic() - started

    def _record_submission(self, generation_id: int, request_id: str) -> None:
        now = utcnow()
        if not self._update(generation_id, [PENDING], status=PROCESSING,
                            fal_request_id=request_id, submitted_at=now, error=None):
            # Another run changed the status meanwhile: still keep the paid request's id.
            with self.database.write() as db:
                db.execute("UPDATE generations SET fal_request_id = :request_id, "
                           "submitted_at = :now WHERE id = :generation_id "
                           "AND fal_request_id IS NULL",
                           request_id=request_id, now=now, generation_id=generation_id)

    def _collect(
        self,
        outcome: Outcome,
        endpoint: str,
        request_id: str,
        user_id: str,
        deadline: Deadline,
        notify: ProgressCallback,
        submitted: float,
        slot: FalSlot | None,
    ) -> None:
        """Wait for fal, then store the images; the row ends COMPLETED, FAILED or PROCESSING."""
        assert outcome.id is not None and self.fal is not None
        fal = self.fal
        status = self._wait(outcome, endpoint, request_id, deadline, notify, submitted)
        if slot is not None:
            slot.release()  # fal has answered (or we stopped waiting): the next may go
        if status is None:
            return
        if status.error:
            self._fail(outcome, f"fal: {status.error}", [PROCESSING, PENDING])
            outcome.exception = GenerationFailed(f"generation {outcome.id} failed at fal: "
                                                 f"{status.error}")
            return
        try:
            result = fal.result(endpoint, request_id, deadline)
        except FalTimeout as e:
            outcome.error = e.message
            outcome.exception = GenerationPending(
                f"generation {outcome.id} finished at fal but its result did not arrive in time",
                hint=FIX_PENDING_HINT)
            return
        except FalError as e:
            self._fail(outcome, e.message, [PROCESSING, PENDING])
            outcome.exception = GenerationFailed(e.message)
            return
        if not result.images:
            self._fail(outcome, "fal returned no images", [PROCESSING, PENDING])
            outcome.exception = GenerationFailed(f"generation {outcome.id}: fal returned no "
                                                 "images")
            return
        notify(Progress(outcome.id, "downloading", f"{len(result.images)} image(s)"))
        try:
            outcome.images = self.store_images(outcome.id, user_id,
                                               [i.url for i in result.images], deadline)
        except ImageRejected as e:
            self._fail(outcome, e.message, [PROCESSING, PENDING])
            outcome.exception = GenerationFailed(f"generation {outcome.id}: {e.message}")
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
                        completed_at=utcnow(), error=None):
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

        Polls every `poll_interval`, more often when this run expects the completion (see
        `PollSchedule`); `submitted` is when the submission had left (monotonic clock): fal's
        clock starts then, and an answer slowed by a busy moment would shift every call late.
        """
        assert outcome.id is not None and self.fal is not None
        # fal answers a submission IN_QUEUE: the first status call waits one interval (or
        # until the window of an expected completion).
        last = FalStatus("IN_QUEUE")
        notify(Progress(outcome.id, "queued"))
        unfinished_at: float | None = None  # when the last unfinished status was asked for
        asked_at = 0.0
        seen_logs = 0
        while True:
            # Calls go out `delay` after the previous one went out, not after its answer
            # came: answers slow under load would otherwise stretch every interval.
            delay = max(0.0, self._polls.delay(endpoint, asked_at, self.poll_interval)
                        - (time.monotonic() - submitted - asked_at))
            if deadline.remaining() <= delay:
                break
            self._polls.sleep(endpoint, submitted, self.poll_interval, delay, asked_at)
            asked_at = time.monotonic() - submitted
            try:
                status = self.fal.status(endpoint, request_id, deadline)
            except FalTimeout:
                break
            except FalRequestRejected as e:
                self._fail(outcome, e.message, [PROCESSING, PENDING])
                outcome.exception = GenerationFailed(e.message)
                return None
            except FalError as e:
                outcome.error = e.message
                outcome.exception = GenerationPending(
                    f"lost contact with fal while waiting for generation {outcome.id}: "
                    f"{e.message}", hint=FIX_PENDING_HINT)
                return None
            last = status
            if status.state == "COMPLETED":
                if status.error is None and unfinished_at is not None:
                    self._polls.record(endpoint, unfinished_at, time.monotonic() - submitted)
                return status
            unfinished_at = asked_at
            if status.state == "IN_QUEUE":
                crash_point("queued")
                notify(Progress(outcome.id, "queued", queue_position=status.queue_position))
            else:
                crash_point("running")
                new_logs = status.logs[seen_logs:]
                seen_logs = len(status.logs)
                notify(Progress(outcome.id, "running", new_logs[-1] if new_logs else ""))
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
        """The deadline came: cancel what is still queued; leave what runs to fix-pending."""
        assert outcome.id is not None and self.fal is not None
        seconds = deadline.seconds or 0
        if last.state == "IN_QUEUE":
            try:
                self.fal.cancel(endpoint, request_id, Deadline(5.0))
            except FalError:
                pass
            else:
                reason = "timed out in queue, cancelled"
                self._fail(outcome, reason, [PROCESSING, PENDING])
                outcome.exception = GenerationFailed(
                    f"generation {outcome.id} {reason} after {seconds:g}s",
                    hint="Raise --timeout; fal's queue may be long right now.")
                return
        outcome.error = f"still running at fal after {seconds:g}s"
        outcome.exception = GenerationPending(
            f"generation {outcome.id} is still running at fal after {seconds:g}s; "
            "the row stays PROCESSING", hint=FIX_PENDING_HINT)

    def store_images(
        self, generation_id: int, user_id: str, urls: Iterable[str], deadline: Deadline
    ) -> list[StoredImage]:
        """All or nothing: a failure removes the images of this generation already stored."""
        stored: list[StoredImage] = []
        try:
            for n, url in enumerate(urls):
                with open_image(url, max_bytes=self.max_image_bytes, deadline=deadline,
                                trusted_hosts=self.trusted_hosts,
                                client=self._downloads()) as (head, stream):
                    key = object_key(self.prefix, user_id, generation_id, n, head.ext)
                    crash_point("downloading")
                    info = self._uploads.submit(
                        self.storage.put_stream, key, stream, content_type=head.content_type,
                        length=head.length).result()
                stored.append(StoredImage(key, self.storage.presigned_url(key, LINK_EXPIRY),
                                          head.width, head.height, head.content_type, info.size))
                crash_point("uploading")  # some images stored, the row not yet updated
        except BaseException:
            for image in stored:
                try:
                    self.storage.delete(image.key)
                except StorageError:
                    pass
            raise
        return stored

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

        def one(pair: tuple[int, GenerationSpec]) -> Outcome:
            generation_id, spec = pair
            first = pair is created[0]
            if not first:
                first_answered.wait()
            slot = FalSlot(places, first_answered if first else None)
            outcome = self.run(generation_id, spec, Deadline(timeout), on_progress=on_progress,
                               slot=slot)
            if on_done is not None:
                on_done(outcome)
            return outcome

        with ThreadPoolExecutor(max_workers=2 * max(1, concurrency)) as pool:
            return list(pool.map(one, created))

    def create_unique(self, specs: Sequence[GenerationSpec]) -> list[tuple[int, GenerationSpec]]:
        """Insert rows for the specs whose (user, kind, prompt, ratio) has no COMPLETED or
        in-flight row yet, in one transaction that concurrent runs serialize on."""
        created: list[tuple[int, GenerationSpec]] = []
        users = sorted({spec.user_id for spec in specs})
        in_users, user_params = in_list("user", users)
        with self.database.write(exclusive=True) as db:  # SQLite: its one writer lock
            if not self.database.is_sqlite:
                for user in users:
                    db.execute("SELECT pg_advisory_xact_lock(:key)", key=_lock_key(user))
            existing = set(db.rows(
                "SELECT user_id, kind, prompt, aspect_ratio FROM generations "
                f"WHERE user_id IN {in_users} AND {_TAKEN}", **user_params))  # noqa: S608
            for spec in specs:
                identity = (spec.user_id, spec.kind, spec.prompt, spec.aspect_ratio)
                if identity in existing:
                    continue
                existing.add(identity)
                created.append((self._insert(db, spec), spec))
        return created

    def existing_pairs(self, user_id: str, kind: str = IMAGEN4) -> set[tuple[str, str | None]]:
        """(prompt, aspect ratio) pairs this user has COMPLETED or in flight: seeding skips them."""
        with self.database.read() as db:
            return {(prompt, ratio) for prompt, ratio in db.rows(
                "SELECT DISTINCT prompt, aspect_ratio FROM generations WHERE user_id = :user "
                f"AND kind = :kind AND {_TAKEN}", user=user_id, kind=kind)}  # noqa: S608


def _lock_key(user_id: str) -> int:
    """A stable 63-bit advisory-lock key for seeding one user's gallery."""
    import hashlib

    digest = hashlib.sha256(f"imagen4ctl-seed:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _with_hint(error: Imagen4ctlError, cause: Imagen4ctlError) -> Imagen4ctlError:
    error.hint = cause.hint
    return error
