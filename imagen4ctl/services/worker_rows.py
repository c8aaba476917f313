"""The rows a worker holds, and what it does with each, on a thread per row.

A queued row is submitted through `GenerationService.run`, with `hand_back_unsent`: a
submission fal never took queues the row again instead of failing it. An unattended row (a
dead worker's, one handed over, a stuck one) goes through fix-pending's `Recovery`: planned
from fal's answers, then applied — recovered, adopted or failed, never sent a second time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from imagen4ctl.db import generations
from imagen4ctl.db.generations import GenerationRow
from imagen4ctl.db.values import COMPLETED, FAILED, PENDING, PROCESSING, utcnow
from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import (
    DatabaseError,
    FalAccountLocked,
    FalError,
    FalKeyRejected,
    Imagen4ctlError,
    StorageError,
)
from imagen4ctl.services.outcome import Outcome, Progress
from imagen4ctl.services.pacing import FalSlot
from imagen4ctl.services.recovery import claim_is_dead
from imagen4ctl.services.worker_state import Backoff, WorkerEvent

if TYPE_CHECKING:
    from imagen4ctl.services.recovery_plan import Item
    from imagen4ctl.services.worker import Worker

WAIT_AGAIN = 1.0  # seconds before asking fal again about an unattended row it still runs
SCAN_EVERY = 1.0  # seconds between looks for unattended rows (queued ones: every pass)


@dataclass
class Task:
    row: GenerationRow
    kind: str  # submit | recover
    at_fal: bool = False  # holds one of this worker's places at fal
    started: float = field(default_factory=time.monotonic)


class _Place(FalSlot):
    """A task's place at fal, given back by `GenerationService.run` once fal has answered."""

    def __init__(self, rows: WorkerRows, task: Task) -> None:
        super().__init__(threading.Semaphore(1))
        self._rows, self._task = rows, task

    def release(self) -> None:
        super().release()
        self._rows.left_fal(self._task)


class WorkerRows:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.recovery = worker.recovery
        self.service = worker.service
        self.database = worker.database
        self.token = worker.recovery.token  # host:pid:uuid, this worker's claims
        self.options = worker.options
        self.stuck_after = worker.recovery.options.older_than  # STUCK_AFTER
        self.timeout = worker.recovery.options.timeout
        self.created_before: datetime | None = None  # --once: only rows that were there
        self.refused = False  # fal refused a submission: one at a time until one goes
        self.dead: list[str] = []  # owners found dead by the last scan
        self._scanned = -SCAN_EVERY
        self._lock = threading.Lock()
        self._tasks: dict[int, Task] = {}
        self._unreleased: dict[int, str | None] = {}  # row id: why it is handed over, if so
        self._retry: dict[int, tuple[float, Backoff]] = {}
        self._seen: set[int] = set()  # --once: each unattended row once

    # --- bookkeeping ---

    def busy(self) -> int:
        with self._lock:
            return len(self._tasks)

    def at_fal(self) -> int:
        with self._lock:
            return sum(1 for t in self._tasks.values() if t.at_fal)

    def left_fal(self, task: Task) -> None:
        """fal has answered (or the run stopped waiting). No pass yet: the row counts against
        the fleet's cap until its answer is recorded (`_progress`) or it ends (`_run`), and
        each of those wakes the loop."""
        with self._lock:
            task.at_fal = False

    def _room(self) -> tuple[int, int]:
        """(new submissions, new rows) this worker can take now."""
        n = self.options.concurrency
        with self._lock:
            rows = 2 * n - len(self._tasks)
            at_fal = sum(1 for t in self._tasks.values() if t.at_fal)
        return max(0, min(n - at_fal, rows)), max(0, rows)

    def stale_before(self) -> datetime:
        return utcnow() - timedelta(seconds=self.options.claim_timeout)

    def scan_due(self) -> bool:
        """Whether this pass also looks for dead owners and unattended rows: once a second,
        while queued rows are claimed on every pass (each finished row wakes one)."""
        now = time.monotonic()
        if now - self._scanned < SCAN_EVERY:
            return False
        self._scanned = now
        return True

    def dead_owners(self) -> list[str]:
        """Owners of claims whose process is gone (this host's pids only)."""
        self.dead = [o for o in generations.claim_owners(self.database)
                     if o != self.token and claim_is_dead(o)]
        return self.dead

    # --- taking rows ---

    def claim_queued(self, dead: list[str]) -> int:
        submissions, _ = self._room()
        if self.refused or self.worker.health.problems():
            submissions = min(submissions, 1)  # the canary: one submission tells
            if self.busy_submitting():
                submissions = 0
        if submissions <= 0:
            return 0
        _, rows = generations.claim_queued(
            self.database, kind=self.options.kind, owner=self.token, now=utcnow(),
            cap=self.worker.cap, limit=submissions, stale_before=self.stale_before(),
            dead=dead, created_before=self.created_before)
        for row in rows:
            self._start(Task(row, "submit", at_fal=True))
        self.worker.stats.add("claims", len(rows))
        return len(rows)

    def busy_submitting(self) -> bool:
        with self._lock:
            return any(t.kind == "submit" for t in self._tasks.values())

    def take_unattended(self, dead: list[str]) -> int:
        _, room = self._room()
        if room <= 0:
            return 0
        now = utcnow()
        rows = generations.unattended(
            self.database, kind=self.options.kind, owner=self.token,
            stale_before=self.stale_before(),
            settled_before=now - timedelta(seconds=self.options.claim_timeout),
            stuck_before=now - timedelta(seconds=self.stuck_after), dead=dead,
            limit=room + len(self._retry) + len(self._seen))
        started = 0
        clock = time.monotonic()
        with self._lock:  # forget the rows whose wait is long over (another run ended them)
            for row_id in [i for i, (until, _) in self._retry.items()
                           if until < clock - 2 * self.options.max_backoff]:
                del self._retry[row_id]
        for row in rows:
            if started >= room:
                break
            with self._lock:
                if row.id in self._tasks or row.id in self._seen or \
                        self._retry.get(row.id, (0.0, None))[0] > clock:
                    continue
            if self.options.once:
                self._seen.add(row.id)
            self._start(Task(row, "recover"))
            started += 1
        return started

    def _start(self, task: Task) -> None:
        with self._lock:
            self._tasks[task.row.id] = task
        threading.Thread(target=self._run, args=(task,), name=f"row-{task.row.id}",
                         daemon=True).start()

    def _run(self, task: Task) -> None:
        ended = False  # the row ended: its last change released it too
        handed: str | None = None
        try:
            ended = (self._submit if task.kind == "submit" else self._recover)(task)
        except Imagen4ctlError as e:  # the database (or storage) went away mid-row
            self.worker.report.ok = False
            handed = f"handed back: {e.message}"
            self.worker.down(failed_dependency(e), e.message)
        except Exception as e:  # noqa: BLE001 - a bug must not take the worker down
            self.worker.report.ok = False
            handed = f"handed back: unexpected {type(e).__name__}"
            self.worker.emit(WorkerEvent(f"unexpected {type(e).__name__}: {e}", id=task.row.id,
                                         level="error"))
        finally:
            with self._lock:
                self._tasks.pop(task.row.id, None)
                if not ended:
                    self._unreleased[task.row.id] = handed
            try:
                self.flush_releases()
            except Imagen4ctlError as e:
                self.worker.down("database", e.message)
            self.worker.wake.set()

    # --- claims ---

    def renew(self) -> None:
        with self._lock:
            ids = list(self._tasks)
        generations.renew(self.database, owner=self.token, ids=ids, now=utcnow())

    def flush_releases(self) -> None:
        """Release the rows this worker is done with; one its task could not finish is
        handed over (its `error` says why), so the next pass takes it at once."""
        with self._lock:
            pending = {i: why for i, why in self._unreleased.items() if i not in self._tasks}
        for reason in set(pending.values()):
            ids = sorted(i for i, why in pending.items() if why == reason)
            generations.release_rows(self.database, owner=self.token, ids=ids, reason=reason)
            with self._lock:
                for i in ids:
                    if self._unreleased.get(i, "") == reason:
                        del self._unreleased[i]

    def hand_back(self, reason: str) -> int:
        """Release every claim now; a row that may be at fal keeps `reason` as its error, so
        the next worker takes it at once. The number of rows still being worked on."""
        with self._lock:
            working = list(self._tasks)
        try:
            generations.release_rows(self.database, owner=self.token, ids=working,
                                     reason=reason)
            self.flush_releases()
        except Imagen4ctlError as e:  # they go stale by pid (this host) or --claim-timeout
            self.worker.emit(WorkerEvent(f"could not release claims: {e.message}",
                                         level="warning"))
        return len(working)

    def _retry_later(self, row_id: int, delay: float | None = None) -> None:
        """Do not take this row again before `delay` (else a growing backoff of its own)."""
        with self._lock:
            _, backoff = self._retry.get(row_id, (0.0, None))
            backoff = backoff or Backoff(cap=self.options.max_backoff)
            wait = delay if delay is not None else backoff.next()
            self._retry[row_id] = (time.monotonic() + wait, backoff)

    def _done_with(self, row_id: int) -> None:
        with self._lock:
            self._retry.pop(row_id, None)

    # --- a queued row: submitted through the generation service ---

    def _submit(self, task: Task) -> bool:
        """Send a queued row through the generation service; whether it ended."""
        row, worker = task.row, self.worker
        try:
            spec = self.recovery.resubmission(row)
        except (Imagen4ctlError, TypeError, ValueError) as e:
            reason = f"not submitted: {getattr(e, 'message', e)}"
            worker.report.ok = False
            if not generations.change_claimed(self.database, row.id, expected=PENDING,
                                              owner=self.token, status=FAILED, error=reason):
                return False
            worker.stats.add("failures")
            self._event(task, "cannot be sent as written", PENDING, FAILED, reason=reason)
            return True
        if spec.model != row.fal_endpoint:  # the endpoint it goes to, for whoever asks later
            generations.change_claimed(self.database, row.id, expected=PENDING,
                                       owner=self.token, fal_endpoint=spec.model)
        outcome = self.service.run(
            row.id, spec, Deadline(self.timeout), slot=_Place(self, task),
            on_progress=lambda progress: self._progress(task, progress),
            hand_back_unsent=True)
        self._submitted(task, outcome)
        return outcome.status in {COMPLETED, FAILED}

    def _progress(self, task: Task, progress: Progress) -> None:
        if progress.phase == "submitted":
            self.worker.stats.add("submissions")
            self.worker.fal_answered()
            self._event(task, "submitted", PENDING, PROCESSING, request_id=progress.detail)
        elif progress.phase == "downloading":
            try:  # fal has answered: the next request may go while these images are stored
                generations.mark_answered(self.database, task.row.id, owner=self.token,
                                          now=utcnow())
            except Imagen4ctlError:
                return  # it keeps counting against the cap until the row ends: safe
            self.worker.wake.set()  # the fleet's count has just dropped: claim now

    def _submitted(self, task: Task, outcome: Outcome) -> None:
        worker = self.worker
        request = outcome.fal_request_id
        if outcome.status == COMPLETED:
            worker.stats.add("completions")
            self._event(task, "completed", PROCESSING, COMPLETED, request_id=request)
            return
        worker.report.ok = False
        if outcome.status == FAILED:
            worker.stats.add("failures")
            self._event(task, "failed", PROCESSING if request else PENDING, FAILED,
                        request_id=request, reason=outcome.error)
            return
        error = outcome.exception
        if request is None and isinstance(error, FalError):  # handed back: fal took nothing
            worker.stats.add("requeued")
            self.refused = isinstance(error, FalAccountLocked | FalKeyRejected) or \
                "429" in error.message
            self._event(task, "queued again: fal did not take it", reason=error.message,
                        level="warning")
            worker.down("fal", error.message)
        elif request is None:  # the answer was lost: fal may have it
            self._event(task, "submission state unknown: looked up at fal once it settles",
                        reason=outcome.error, level="warning")
            worker.down("fal", outcome.error or "a submission's answer was lost")
        else:
            self._event(task, "left in flight for the next pass", request_id=request,
                        reason=outcome.error, level="warning")
            dependency = "storage" if isinstance(error, StorageError) else \
                _dependency_of(outcome.error or "")
            if dependency is not None:
                worker.down(dependency, outcome.error or "")

    # --- an unattended row: fix-pending's plan and actions ---

    def _recover(self, task: Task) -> bool:
        """Plan and apply fix-pending's action for an unattended row; whether it ended."""
        row, worker = task.row, self.worker
        item = self.recovery.item_for(row, utcnow())
        if item.error == "held by another run":  # a live run took it meanwhile
            return False
        self.recovery.planner.decide(item, row.submit_started_at)
        if item.action == "wait":
            self._retry_later(row.id, WAIT_AGAIN)
            return False
        if not item.failed:
            self.recovery.apply_item(item)
        if item.failed:  # fal could not be asked, or a fault that may pass stopped it
            worker.report.ok = False
            self._retry_later(row.id)
            self._event(task, f"left as it was: {item.action}", request_id=item.fal_request_id,
                        reason=item.error, level="warning")
            dependency = _dependency_of(item.error or "")
            if dependency is not None:
                worker.down(dependency, item.error or "")
            return False
        self._done_with(row.id)
        if item.outcome == "done":
            self._recovered(task, item)
        return item.status in {COMPLETED, FAILED}

    def _recovered(self, task: Task, item: Item) -> None:
        stats = self.worker.stats
        stats.add("recoveries")
        if item.status == COMPLETED:
            stats.add("completions")
            how = f"recovered from fal's {item.source or 'queue'}"
            if not task.row.fal_request_id and item.fal_request_id:
                how = "a lost submission adopted, " + how
            self._event(task, how, task.row.status, COMPLETED, request_id=item.fal_request_id)
        elif item.status == FAILED:
            stats.add("failures")
            self._event(task, "failed as fix-pending fails it", task.row.status, FAILED,
                        request_id=item.fal_request_id, reason=item.error)

    def _event(self, task: Task, message: str, before: str | None = None,
               after: str | None = None, *, request_id: str | None = None,
               reason: str | None = None, level: str = "info") -> None:
        row = task.row
        self.worker.emit(WorkerEvent(
            message, id=row.id, user_id=row.user_id,
            fal_request_id=request_id or row.fal_request_id, from_status=before,
            to_status=after, seconds=time.monotonic() - task.started, reason=reason,
            level=level))


def failed_dependency(error: Imagen4ctlError) -> str:
    """Which dependency an error is about, by its class: storage, the database, else fal."""
    return "storage" if isinstance(error, StorageError) else \
        "database" if isinstance(error, DatabaseError) else "fal"


def _dependency_of(error: str) -> str | None:
    """Which dependency a row's last error names (generation.py and recovery.py prefix it)."""
    if error.startswith("storage:"):
        return "storage"
    if error.startswith(("status:", "result:", "download:", "could not ask", "fal could not")):
        return "fal"
    return None
