"""fix-pending: recover stuck generations from fal instead of deleting them.

Plan (read-only: the database and fal's status are only read), then apply row by row. Each
row is claimed first with a conditional UPDATE that also requires the row to be exactly as
it was read (same status and `updated_at`), so concurrent runs handle each row once; the
claim lives in the row because a row lock would end with its transaction. A claim does not
touch `updated_at`: it is not a change of state.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import httpx

from imagen4ctl.adapters.fal import (
    Deadline,
    FalAdapter,
    FalStatus,
    PlatformRefused,
    PlatformRequest,
    parse_result,
    platform_requests,
)
from imagen4ctl.db.values import (
    COMPLETED,
    FAILED,
    IN_FLIGHT,
    PENDING,
    as_utc,
    sql_list,
    utcnow,
)
from imagen4ctl.errors import (
    FalError,
    FalRequestRejected,
    Imagen4ctlError,
    StorageError,
    UsageError,
)
from imagen4ctl.services.generation import GenerationService, GenerationSpec

if TYPE_CHECKING:  # the ORM is loaded only to change rows (a dry run reads through the driver)
    from imagen4ctl.db.models import Generation

Action = Literal["recover", "wait", "fail", "resubmit", "delete", "skip"]
ACTIONS: tuple[Action, ...] = ("recover", "wait", "fail", "resubmit", "delete", "skip")
CLAIM_STALE_AFTER = timedelta(minutes=15)
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
    spec: GenerationSpec | None = field(default=None, repr=False)
    image_urls: list[str] = field(default_factory=list, repr=False)
    failed: bool = field(default=False, repr=False)  # fal could not be asked, or it failed

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

    def __post_init__(self) -> None:
        if self.delete and self.backup is None:
            raise UsageError("--delete needs --backup FILE: rows are deleted only after a backup",
                             hint="For example --delete --backup stuck-rows.jsonl")
        if self.delete and (self.resubmit or self.force):
            raise UsageError("--delete cannot be combined with --resubmit or --force")


def claim_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _claim_is_dead(claimed_by: str | None) -> bool:
    """A claim by a process of this host that no longer exists: stale at once."""
    if not claimed_by:
        return False
    host, _, rest = claimed_by.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class StuckRow(NamedTuple):
    """The columns fix-pending plans with, as the driver reads them."""

    id: int
    user_id: str
    kind: str
    status: str
    prompt: str
    aspect_ratio: str | None
    fal_request_id: str | None
    fal_endpoint: str | None
    params: Any
    created_at: datetime
    updated_at: datetime
    submit_started_at: datetime | None
    claimed_by: str | None
    claimed_at: datetime | None

    @classmethod
    def from_driver(cls, values: tuple[Any, ...]) -> StuckRow:
        """SQLite gives times and JSON as text; psycopg2 gives datetimes and dicts."""
        row = cls(*values)
        params = json.loads(row.params) if isinstance(row.params, str) else row.params
        created, updated = as_utc(row.created_at), as_utc(row.updated_at)
        assert created is not None and updated is not None  # NOT NULL columns
        return row._replace(params=params, created_at=created, updated_at=updated,
                            submit_started_at=as_utc(row.submit_started_at),
                            claimed_at=as_utc(row.claimed_at))


class Recovery:
    def __init__(
        self,
        service: GenerationService,
        *,
        default_model: str,
        platform_url: str,
        fal_key: str,
        options: RecoveryOptions,
    ) -> None:
        self.service = service
        self.database = service.database
        self.default_model = default_model
        self.platform_url = platform_url
        self.fal_key = fal_key
        self.options = options
        self.token = claim_token()

    @cached_property
    def _platform_http(self) -> httpx.Client:
        """One client for every Platform API lookup of a run (thread-safe, CA loaded once)."""
        return httpx.Client(follow_redirects=False)

    # --- finding ---

    def stuck_rows(self) -> Iterator[StuckRow]:
        """Stream the candidates (never all rows in memory): oldest first. Read through the
        driver: SQLAlchemy's import and its objects cost more than the 10,000 rows."""
        o = self.options
        where = ["kind = :kind", f"status IN {sql_list(IN_FLIGHT)}", "updated_at < :cutoff"]
        params: dict[str, Any] = {"kind": o.kind,
                                  "cutoff": utcnow() - timedelta(seconds=o.older_than)}
        if o.user_id is not None:
            where.append("user_id = :user_id")
            params["user_id"] = o.user_id
        sql = (f"SELECT {', '.join(StuckRow._fields)} FROM generations "  # noqa: S608
               f"WHERE {' AND '.join(where)} ORDER BY created_at, id")
        if o.limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = o.limit
        with self.database.read() as reader:
            for values in reader.stream(sql, **params):
                yield StuckRow.from_driver(values)

    def item_for(self, row: StuckRow | Generation, now: datetime) -> Item:
        """Both kinds of row carry aware UTC times already (`from_driver`, `UTCDateTime`)."""
        item = Item(row.id, row.user_id, row.kind, row.status,
                    int((now - row.created_at).total_seconds()),
                    int((now - row.updated_at).total_seconds()),
                    row.fal_request_id, read_request_id=row.fal_request_id,
                    read_submit_mark=row.submit_started_at is not None,
                    endpoint=row.fal_endpoint or self.default_model)
        try:
            extra = row.params if isinstance(row.params, dict) else {}
            item.spec = GenerationSpec(
                user_id=row.user_id, prompt=row.prompt, aspect_ratio=row.aspect_ratio or "1:1",
                num_images=int(extra.get("num_images", 1)), seed=extra.get("seed"),
                negative_prompt=extra.get("negative_prompt"),
                resolution=extra.get("resolution"), kind=row.kind)
        except (Imagen4ctlError, TypeError, ValueError):
            item.spec = None  # cannot be resubmitted as it is; recovery still works
        held = row.claimed_by and row.claimed_at and not _claim_is_dead(row.claimed_by) and (
            now - row.claimed_at < CLAIM_STALE_AFTER)
        if held and row.claimed_by != self.token:
            item.action, item.error = "skip", "held by another run"
        return item

    # --- planning: read-only questions to fal ---

    def candidates(self) -> list[tuple[Item, datetime | None]]:
        """The stuck rows as plan items, with the mark of an attempted submission."""
        now = utcnow()
        return [(self.item_for(row, now), row.submit_started_at) for row in self.stuck_rows()]

    def check_fal(self, timeout: float) -> None:
        """Stop before touching any row when fal is unreachable or refuses the key."""
        from imagen4ctl.adapters.fal import probe_key

        fal = self._fal()
        verdict = probe_key(fal.key, self.default_model, timeout=timeout,
                            key_source=fal.key_source)
        if not verdict.accepted:
            raise FalError(f"{verdict.message} (no row was touched)", hint=verdict.hint)

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

    def _fal(self) -> FalAdapter:
        assert self.service.fal is not None
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
        if resubmit and allow_resubmit and item.spec is not None and item.status == PENDING:
            item.action = "resubmit"
        else:
            item.action, item.error = ("delete" if o.delete else "fail"), reason

    def _ask_fal(self, item: Item) -> None:
        """Decide from fal's answer about the item's request id."""
        assert item.fal_request_id is not None
        try:
            status = self._fal().status(item.endpoint, item.fal_request_id, Deadline(30.0))
        except FalRequestRejected:
            self._from_platform(item, reason="fal does not know this request (expired?)")
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
            item.action, item.error = ("delete" if self.options.delete else "fail"), \
                f"fal: {status.error}"
            return
        item.action, item.source = "recover", "queue"

    def _from_platform(self, item: Item, *, reason: str) -> None:
        """fal's queue no longer has it: its Platform API may still hold the payloads."""
        assert item.fal_request_id is not None
        try:
            found = next(iter(platform_requests(
                self.platform_url, self.fal_key, item.endpoint, Deadline(30.0),
                request_id=item.fal_request_id, start=_iso(utcnow() - timedelta(days=90)),
                trusted_hosts=self.service.trusted_hosts, client=self._platform_http)), None)
        except PlatformRefused as e:
            item.action = "delete" if self.options.delete else "fail"
            item.error = f"{reason}; {e.message}"
            return
        except FalError as e:
            item.action, item.failed = "skip", True
            item.error = f"fal's Platform API could not be asked: {e.message}"
            return
        self._from_platform_record(item, found, reason)

    def _from_platform_record(self, item: Item, found: PlatformRequest | None,
                              reason: str) -> None:
        if found is None:
            item.action = "delete" if self.options.delete else "fail"
            item.error = reason
            return
        item.fal_status = "COMPLETED"
        if not found.succeeded:
            item.action = "delete" if self.options.delete else "fail"
            item.error = f"fal: the request ended with status {found.status_code}"
            return
        try:
            item.image_urls = [i.url for i in parse_result(found.json_output).images]
        except FalError as e:
            item.action, item.error = ("delete" if self.options.delete else "fail"), \
                f"fal's Platform API has no usable output: {e.message}"
            return
        item.action, item.source = "recover", "platform"

    def _find_lost_submission(self, item: Item, submit_mark: datetime) -> str | None:
        """The process died between fal's answer and saving the id: find the request by its
        endpoint, time window and prompt, instead of paying for it twice."""
        mark = as_utc(submit_mark) or utcnow()
        try:
            for record in platform_requests(
                self.platform_url, self.fal_key, item.endpoint, Deadline(30.0),
                start=_iso(mark - timedelta(minutes=1)), end=_iso(utcnow() + timedelta(minutes=1)),
                trusted_hosts=self.service.trusted_hosts, client=self._platform_http,
            ):
                arguments = record.json_input if isinstance(record.json_input, dict) else {}
                if item.spec is not None and arguments.get("prompt") == item.spec.prompt and \
                        arguments.get("aspect_ratio", "1:1") == item.spec.aspect_ratio:
                    item.source = "platform"
                    return record.request_id
        except PlatformRefused as e:
            item.error = f"{STATE_UNKNOWN}; {e.message}"
        except FalError as e:
            item.action, item.failed = "skip", True
            item.error = f"fal's Platform API could not be asked: {e.message}"
        return None

    # --- applying ---

    def apply(self, report: RecoveryReport) -> RecoveryReport:
        if self.options.backup is not None:
            self.options.backup.parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, self.options.concurrency)) as pool:
            list(pool.map(self.apply_item, report.items))
        return report

    def apply_item(self, item: Item) -> None:
        if item.action in {"skip", "wait"}:
            item.outcome = "skipped" if item.action == "skip" else "left"
            return
        if not self.claim(item):
            item.action, item.outcome = "skip", "skipped"
            item.error = "held by another run, or changed since it was read"
            return
        try:
            self._carry_out(item)
        except Imagen4ctlError as e:
            item.outcome, item.failed, item.error = "failed", True, e.message
        finally:
            self.release(item)

    def _carry_out(self, item: Item) -> None:
        if item.action == "fail":
            done = self.set_state(item, status=FAILED, error=item.error)
            item.outcome = "done" if done else "skipped"
        elif item.action == "delete":
            self._backup_and_delete(item)
        elif item.action == "recover":
            self._recover(item)
        elif item.action == "resubmit":
            self._resubmit(item)

    def _recover(self, item: Item) -> None:
        assert item.fal_request_id is not None
        deadline = Deadline(self.options.timeout)
        if item.source == "queue":
            try:
                result = self._fal().result(item.endpoint, item.fal_request_id, deadline)
                item.image_urls = [i.url for i in result.images]
            except FalRequestRejected:
                self._from_platform(item, reason="fal's queue result expired")
                if item.action != "recover":
                    done = self.set_state(item, status=FAILED, error=item.error)
                    item.outcome = "done" if done else "skipped"
                    return
        if not item.image_urls:
            item.action, item.error = "fail", "fal returned no images"
            self.set_state(item, status=FAILED, error=item.error)
            item.outcome = "done"
            return
        try:
            images = self.service.store_images(item.id, item.user_id, item.image_urls, deadline)
        except StorageError as e:
            item.outcome, item.failed = "failed", True
            item.error = f"storage: {e.message}"
            return
        except FalError as e:  # the image itself is unusable: nothing will fix that later
            item.action, item.error = "fail", e.message
            self.set_state(item, status=FAILED, error=e.message)
            item.outcome = "done"
            return
        if self.set_state(item, status=COMPLETED, result_urls=[i.key for i in images],
                     fal_request_id=item.fal_request_id, completed_at=utcnow(), error=None):
            item.outcome = "done"
        else:
            item.outcome, item.failed = "failed", True
            item.error = "the row changed while its images were stored"

    def _resubmit(self, item: Item) -> None:
        assert item.spec is not None
        self.service.preflight()
        outcome = self.service.run(item.id, item.spec, Deadline(self.options.timeout))
        item.fal_request_id = outcome.fal_request_id
        item.status = outcome.status
        if outcome.status == COMPLETED:
            item.outcome, item.error = "done", None
        else:
            item.outcome, item.failed = "failed", True
            item.error = outcome.error or (outcome.exception.message if outcome.exception
                                           else None)

    # --- the row: claim, conditional changes, backup ---

    def claim(self, item: Item) -> bool:
        from sqlalchemy import or_, select, update

        from imagen4ctl.db.models import Generation as g  # noqa: N813
        now = utcnow()
        stale = now - CLAIM_STALE_AFTER
        with self.database.session() as session:
            current = session.execute(select(g.claimed_by).where(g.id == item.id)).scalar()
            free = or_(g.claimed_by.is_(None), g.claimed_at < stale)
            if _claim_is_dead(current):
                free = or_(free, g.claimed_by == current)
            # "As read": the fields the plan was decided on. (Not updated_at: SQLite keeps it
            # as text in whatever format its writer used, so equality is unreliable there.)
            same_request = (g.fal_request_id.is_(None) if item.read_request_id is None
                            else g.fal_request_id == item.read_request_id)
            same_mark = (g.submit_started_at.is_(None) if not item.read_submit_mark
                         else g.submit_started_at.is_not(None))
            target = (
                select(g.id)
                .where(g.id == item.id, g.status == item.status, same_request, same_mark, free)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            result = session.execute(
                update(g).where(g.id == target).values(claimed_by=self.token, claimed_at=now)
                .execution_options(synchronize_session=False)
            )
            session.commit()
            return bool(getattr(result, "rowcount", 0))

    def release(self, item: Item) -> None:
        from sqlalchemy import update

        from imagen4ctl.db.models import Generation as g  # noqa: N813
        with self.database.session() as session:
            session.execute(update(g).where(g.id == item.id, g.claimed_by == self.token)
                            .values(claimed_by=None, claimed_at=None))
            session.commit()

    def set_state(self, item: Item, **values: Any) -> bool:
        """A state change, only if the row is still as read and still ours."""
        from sqlalchemy import and_, update

        from imagen4ctl.db.models import Generation as g  # noqa: N813
        values.setdefault("updated_at", utcnow())
        with self.database.session() as session:
            result = session.execute(
                update(g).where(and_(g.id == item.id, g.status == item.status,
                                     g.claimed_by == self.token)).values(**values)
            )
            session.commit()
            changed = bool(getattr(result, "rowcount", 0))
        if changed and "status" in values:
            item.status = values["status"]
        return changed

    def _backup_and_delete(self, item: Item) -> None:
        from sqlalchemy import delete

        from imagen4ctl.db.models import Generation as g  # noqa: N813

        backup = self.options.backup
        assert backup is not None
        with self.database.session() as session:
            row = session.get(g, item.id)
            if row is None or row.claimed_by != self.token or row.status != item.status:
                item.outcome, item.error = "skipped", "changed since it was read"
                return
            line = json.dumps(row_to_json(row), ensure_ascii=False)
        with _BACKUP_LOCK:
            with backup.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        with self.database.session() as session:
            result = session.execute(delete(g).where(g.id == item.id, g.status == item.status,
                                                     g.claimed_by == self.token))
            session.commit()
        item.outcome = "done" if getattr(result, "rowcount", 0) else "skipped"


_BACKUP_LOCK = threading.Lock()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@cache
def _columns() -> tuple[str, ...]:
    """The table's column names, read once (a backup asks for them at every row)."""
    from imagen4ctl.db.tables import generations

    return tuple(c.name for c in generations.columns)


def row_to_json(row: Generation) -> dict[str, Any]:
    """Every column, datetimes as ISO 8601: what `--restore` needs to put the row back."""
    data: dict[str, Any] = {}
    for name in _columns():
        value = getattr(row, name)
        data[name] = value.isoformat() if isinstance(value, datetime) else value
    data["claimed_by"] = data["claimed_at"] = None  # a restored row belongs to no run
    return data


def restore(database: Any, path: Path) -> tuple[int, list[int]]:
    """Put rows from a `--backup` file back, every column intact; ids that exist are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read backup file {path}: {e}") from e
    rows: list[dict[str, Any]] = []
    columns = set(_columns())
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}, line {number}: not a JSON object") from e
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            raise UsageError(f"{path}, line {number}: not a backed-up generation row")
        row = {k: v for k, v in data.items() if k in columns}
        for name in ("created_at", "updated_at", "submit_started_at", "submitted_at",
                     "completed_at", "claimed_at"):
            if isinstance(row.get(name), str):
                row[name] = datetime.fromisoformat(row[name])
        rows.append(row)
    from sqlalchemy import insert, select

    from imagen4ctl.db.models import Generation as g  # noqa: N813

    restored, skipped = 0, []
    with database.session() as session:
        existing = set(session.scalars(select(g.id).where(g.id.in_([r["id"] for r in rows]))))
        for row in rows:
            if row["id"] in existing:
                skipped.append(row["id"])
                continue
            session.execute(insert(g), [row])
            restored += 1
        session.commit()
        if database.url.get_backend_name() == "postgresql" and restored:
            from sqlalchemy import text

            session.execute(text("SELECT setval(pg_get_serial_sequence('generations', 'id'), "
                                 "GREATEST((SELECT max(id) FROM generations), 1))"))
            session.commit()
    return restored, skipped

