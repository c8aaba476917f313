"""fix-pending's plan: what became of each stuck row at fal, and so what to do with it.

Read-only: fal's queue is asked first, then its Platform API (which keeps payloads after the
queue has forgotten a request); no row is changed and nothing is paid for here. Only an
answer decides a row: a question fal would not answer (401/403, a wrong FAL_PLATFORM_API_URL,
no connection) leaves it as it was, "could not ask", and fix-pending exits 1.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from imagen4ctl.adapters.fal import FalStatus, ImageRef, parse_result
from imagen4ctl.adapters.fal_platform import PlatformAPI, PlatformRequest
from imagen4ctl.db.values import PENDING, as_utc, utcnow
from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import FalError, FalRequestRejected, UsageError

if TYPE_CHECKING:
    from imagen4ctl.adapters.fal import FalAdapter
    from imagen4ctl.services.generation import GenerationService, GenerationSpec

Action = Literal["recover", "wait", "fail", "resubmit", "delete", "skip"]
ACTIONS: tuple[Action, ...] = ("recover", "wait", "fail", "resubmit", "delete", "skip")
NEVER_SUBMITTED = "never submitted"
STATE_UNKNOWN = "submission state unknown"


@dataclass
class Item:
    """One stuck row, what fal says about it, and what is (or was) done."""

    id: int
    user_id: str
    kind: str
    status: str
    age_seconds: int
    state_seconds: int
    fal_request_id: str | None
    fal_status: str | None = None
    queue_position: int | None = None
    source: str | None = None  # queue | platform: where a result was (or will be) taken from
    action: Action = "skip"
    outcome: str = "planned"
    error: str | None = None
    # what the plan read, so that applying it can insist the row is unchanged
    read_request_id: str | None = field(default=None, repr=False)
    read_submit_mark: bool = field(default=False, repr=False)
    endpoint: str = field(default="", repr=False)
    prompt: str = field(default="", repr=False)
    aspect_ratio: str | None = field(default=None, repr=False)
    params: Any = field(default=None, repr=False)
    spec: GenerationSpec | None = field(default=None, repr=False)  # to send it again
    unsendable: str | None = field(default=None, repr=False)  # why there is no `spec`
    images: list[ImageRef] = field(default_factory=list, repr=False)
    failed: bool = field(default=False, repr=False)  # fal could not be asked, or it failed

    @property
    def image_urls(self) -> list[str]:
        return [image.url for image in self.images]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "user_id": self.user_id, "kind": self.kind, "status": self.status,
            "age_seconds": self.age_seconds, "state_seconds": self.state_seconds,
            "fal_request_id": self.fal_request_id, "fal_status": self.fal_status,
            "queue_position": self.queue_position, "source": self.source,
            "action": self.action, "outcome": self.outcome, "error": self.error,
        }


@dataclass
class RecoveryReport:
    dry_run: bool
    older_than_seconds: int
    items: list[Item]

    @property
    def ok(self) -> bool:
        return not any(item.failed for item in self.items)

    def counts(self) -> dict[str, int]:
        return {a: sum(1 for i in self.items if i.action == a) for a in ACTIONS}

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "older_than_seconds": self.older_than_seconds,
                "found": len(self.items), "actions": self.counts(),
                "items": [i.to_json() for i in self.items]}


@dataclass(frozen=True)
class RecoveryOptions:
    older_than: float
    kind: str = "imagen4"
    user_id: str | None = None
    apply: bool = False
    resubmit: bool = False
    force: bool = False
    delete: bool = False
    backup: Path | None = None
    limit: int | None = None
    concurrency: int = 4
    timeout: float = 300.0
    # Also the rows a generation handed over (in flight, with its request id and last error),
    # however recent: it told the user to run fix-pending.
    handed_over: bool = False
    # Seconds after which another run's claim, not renewed, is stale: the worker's
    # --claim-timeout (its claims are renewed); fix-pending's own claims are not.
    claim_timeout: float = 900.0

    def __post_init__(self) -> None:
        if self.delete and self.backup is None:
            raise UsageError("--delete needs --backup FILE: rows are deleted only after a backup",
                             hint="For example --delete --backup stuck-rows.jsonl")
        if self.delete and (self.resubmit or self.force):
            raise UsageError("--delete cannot be combined with --resubmit or --force")


class Planner:
    """Decides each row's action from fal's answers; shared by fix-pending and reconcile."""

    def __init__(self, service: GenerationService, options: RecoveryOptions, *,
                 platform_url: str, fal_key: str) -> None:
        self.service = service
        self.options = options
        self.platform_url = platform_url
        self.fal_key = fal_key

    @cached_property
    def _platform(self) -> PlatformAPI:
        """One client for every Platform API lookup of a run (thread-safe, CA loaded once)."""
        return PlatformAPI(self.platform_url, self.fal_key,
                           trusted_hosts=self.service.trusted_hosts)

    def plan(self, candidates: list[tuple[Item, datetime | None]]) -> RecoveryReport:
        """Ask fal (read-only, with bounded concurrency) what became of each candidate. Rows
        never submitted are decided here: nothing to ask, and a pool's task for each of
        thousands of them cost more than the decision."""
        ask: list[tuple[Item, datetime | None]] = []
        for item, submit_mark in candidates:
            if item.error == "held by another run":
                continue
            if item.fal_request_id is None and submit_mark is None:
                self.decide(item, submit_mark)  # asks nobody
            else:
                ask.append((item, submit_mark))
        with ThreadPoolExecutor(max_workers=max(1, self.options.concurrency)) as pool:
            for _ in pool.map(lambda entry: self.decide(*entry), ask):
                pass
        return RecoveryReport(not self.options.apply, int(self.options.older_than),
                              [item for item, _ in candidates])

    def fal(self) -> FalAdapter:
        assert self.service.fal is not None  # `Recovery.run` stops earlier without a key
        return self.service.fal

    def decide(self, item: Item, submit_mark: datetime | None) -> None:
        o = self.options
        if item.fal_request_id is None:
            if submit_mark is None:
                self._without_request(item, NEVER_SUBMITTED)
                return
            adopted = self._find_lost_submission(item, submit_mark)
            if adopted is None:
                if item.failed:
                    return
                self._without_request(item, STATE_UNKNOWN, allow_resubmit=o.force)
                return
            item.fal_request_id = adopted
        self._ask_fal(item)

    def _without_request(self, item: Item, reason: str, *, allow_resubmit: bool = True) -> None:
        o = self.options
        resubmit = o.resubmit if reason == NEVER_SUBMITTED else o.force
        if not (resubmit and allow_resubmit and item.status == PENDING):
            self._end(item, reason)
        elif item.spec is not None:
            item.action = "resubmit"
        else:  # never sent with a value dropped or changed: the row waits for a decision
            item.action, item.failed = "skip", True
            item.error = f"not resubmitted: {item.unsendable} — {reason}"

    def _end(self, item: Item, error: str) -> None:
        """The row ends: FAILED with `error`, or deleted with --delete."""
        item.action, item.error = ("delete" if self.options.delete else "fail"), error

    def _ask_fal(self, item: Item) -> None:
        """Decide from fal's answer about the item's request id."""
        assert item.fal_request_id is not None
        try:
            status = self.fal().status(item.endpoint, item.fal_request_id, Deadline(30.0))
        except FalRequestRejected:
            self.from_platform(item, reason="fal does not know this request (expired?)")
            return
        except FalError as e:
            item.action, item.failed = "skip", True
            item.error = f"fal could not be asked: {e.message}"
            return
        self._from_status(item, status)

    def _from_status(self, item: Item, status: FalStatus) -> None:
        item.fal_status, item.queue_position = status.state, status.queue_position
        if status.state != "COMPLETED":
            item.action = "wait"
            return
        if status.error:
            self._end(item, f"fal: {status.error}")
            return
        item.action, item.source = "recover", "queue"

    def from_platform(self, item: Item, *, reason: str) -> None:
        """fal's queue no longer has it: its Platform API may still hold the payloads."""
        assert item.fal_request_id is not None
        try:
            found = next(iter(self._platform.requests(
                item.endpoint, Deadline(30.0), request_id=item.fal_request_id,
                start=_iso(utcnow() - timedelta(days=90)))), None)
        except FalError as e:
            _could_not_ask(item, e, reason)
            return
        self._from_platform_record(item, found, reason)

    def _from_platform_record(self, item: Item, found: PlatformRequest | None,
                              reason: str) -> None:
        if found is None:
            self._end(item, reason)
            return
        item.fal_status = "COMPLETED"
        if not found.succeeded:
            self._end(item, f"fal: the request ended with status {found.status_code}")
            return
        try:
            item.images = list(parse_result(found.json_output).images)
        except FalError as e:
            self._end(item, f"fal's Platform API has no usable output: {e.message}")
            return
        item.action, item.source = "recover", "platform"

    def _find_lost_submission(self, item: Item, submit_mark: datetime) -> str | None:
        """The process died between fal's answer and saving the id: find the request by its
        endpoint, time window and prompt, instead of paying for it twice."""
        mark = as_utc(submit_mark) or utcnow()
        try:
            for record in self._platform.requests(
                item.endpoint, Deadline(30.0), start=_iso(mark - timedelta(minutes=1)),
                end=_iso(utcnow() + timedelta(minutes=1)),
            ):
                arguments = record.json_input if isinstance(record.json_input, dict) else {}
                if arguments.get("prompt") == item.prompt and \
                        arguments.get("aspect_ratio", "1:1") == (item.aspect_ratio or "1:1"):
                    item.source = "platform"
                    return record.request_id
        except FalError as e:  # neither fail nor resubmit
            _could_not_ask(item, e, STATE_UNKNOWN)
        return None


def _could_not_ask(item: Item, error: FalError, about: str) -> None:
    """fal would not answer (refused, a wrong URL, unreachable): no verdict on the row, which
    stays as it was, and the run exits 1."""
    item.action, item.failed = "skip", True
    item.error = f"could not ask: {error.message} — {about}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
