"""fix-pending: recover stuck generations from fal instead of deleting them.

Plan (read-only: the database and fal's status are only read), then apply row by row. Each
row is claimed first with a conditional UPDATE that also requires the row to be exactly as
it was read (same status and `updated_at`), so concurrent runs handle each row once; the
claim lives in the row because a row lock would end with its transaction. A claim does not
touch `updated_at`: it is not a change of state.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from imagen4ctl.adapters.download import ImageGone
from imagen4ctl.adapters.fal_answers import FalResultRefused
from imagen4ctl.db import generations
from imagen4ctl.db.generations import GenerationRow
from imagen4ctl.db.values import COMPLETED, FAILED, utcnow
from imagen4ctl.deadline import Deadline
from imagen4ctl.endpoints import ENDPOINTS, endpoint_named
from imagen4ctl.errors import (
    FalError,
    FalRequestRejected,
    Imagen4ctlError,
    StorageError,
    UsageError,
)
from imagen4ctl.services.backup import append as append_backup
from imagen4ctl.services.backup import backup_line
from imagen4ctl.services.generation import GenerationService, GenerationSpec
from imagen4ctl.services.images import StoredImage, fal_sizes
from imagen4ctl.services.recovery_plan import Item, Planner, RecoveryOptions, RecoveryReport
from imagen4ctl.services.verdicts import is_verdict

# The fal input a row keeps in `params` (prompt and ratio have columns), sent again as it is.
RESENT = ("num_images", "seed", "negative_prompt", "resolution")


def claim_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim_is_dead(claimed_by: str | None) -> bool:
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
        self.options = options
        self.planner = Planner(service, options, platform_url=platform_url, fal_key=fal_key)
        self.token = claim_token()
        self.stale_after = timedelta(seconds=options.claim_timeout)
        # Set by the first resubmission fal refuses for a locked account: the rest are not sent.
        self.account_locked = threading.Event()

    def run(self) -> RecoveryReport:
        """fix-pending: find the stuck rows, stop before touching any if fal cannot be asked,
        plan, and carry the plan out when `apply` was asked for."""
        candidates = self.candidates()
        if candidates:
            self.service.require_fal("no row was touched")
            self.check_fal(timeout=min(self.options.timeout, 10.0))
        report = self.planner.plan(candidates)
        if self.options.apply:
            if any(i.action in {"recover", "resubmit"} for i in report.items):
                self.service.preflight()
            self.apply(report)
        return report

    # --- finding ---

    def stuck_rows(self) -> Iterator[GenerationRow]:
        """Stream the candidates (never all rows in memory): oldest first."""
        o = self.options
        return generations.stream_stuck(
            self.database, kind=o.kind, cutoff=utcnow() - timedelta(seconds=o.older_than),
            user_id=o.user_id, limit=o.limit, handed_over=o.handed_over)

    def item_for(self, row: GenerationRow, now: datetime) -> Item:
        """The row's times are aware UTC, however it was read."""
        assert row.created_at is not None and row.updated_at is not None  # NOT NULL columns
        item = Item(row.id, row.user_id, row.kind, row.status,
                    int((now - row.created_at).total_seconds()),
                    int((now - row.updated_at).total_seconds()),
                    row.fal_request_id, read_request_id=row.fal_request_id,
                    read_submit_mark=row.submit_started_at is not None,
                    endpoint=row.fal_endpoint or self.default_model, prompt=row.prompt,
                    aspect_ratio=row.aspect_ratio, params=row.params)
        try:
            item.spec = self.resubmission(row)
        except Imagen4ctlError as e:  # cannot be resubmitted as it is; recovery still works
            item.unsendable = e.message
        except (TypeError, ValueError) as e:
            item.unsendable = f"the row's params cannot be sent: {e}"
        if row.claimed_by != self.token and \
                row.held_by_live_claim(now, self.stale_after, claim_is_dead):
            item.action, item.error = "skip", "held by another run"
        return item

    def resubmission(self, row: GenerationRow) -> GenerationSpec:
        """The row as it would be sent again: to its own endpoint when imagen4ctl knows it,
        else to IMAGEN4_MODEL. A value stored in `params` that endpoint does not take is a
        UsageError: dropping it would pay for another image than the one asked for."""
        endpoint = ENDPOINTS.get(row.fal_endpoint or "") or endpoint_named(
            self.default_model, source="IMAGEN4_MODEL")
        extra = row.params if isinstance(row.params, dict) else {}
        untaken = [name for name in RESENT
                   if extra.get(name) is not None and not endpoint.takes(name)]
        if untaken:
            raise UsageError(f"{endpoint.id} does not take the row's {' or '.join(untaken)}")
        return GenerationSpec(
            user_id=row.user_id, prompt=row.prompt, aspect_ratio=row.aspect_ratio or "1:1",
            num_images=int(extra.get("num_images", 1)), seed=extra.get("seed"),
            negative_prompt=extra.get("negative_prompt"), resolution=extra.get("resolution"),
            kind=row.kind, model=endpoint.id)

    # --- planning: read-only questions to fal ---

    def candidates(self) -> list[tuple[Item, datetime | None]]:
        """The stuck rows as plan items, with the mark of an attempted submission."""
        now = utcnow()
        return [(self.item_for(row, now), row.submit_started_at) for row in self.stuck_rows()]

    def check_fal(self, timeout: float) -> None:
        """Stop before touching any row when fal is unreachable or refuses the key."""
        from imagen4ctl.adapters.fal import probe_key

        fal = self.planner.fal()
        verdict = probe_key(fal.key, self.default_model, timeout=timeout,
                            key_source=fal.key_source)
        if not verdict.accepted:
            raise FalError(f"{verdict.message} (no row was touched)", hint=verdict.hint)

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
                result = self.planner.fal().result(item.endpoint, item.fal_request_id, deadline)
                item.images = list(result.images)
            except FalResultRefused as e:  # fal's verdict
                self._fail_row(item, e.message)
                return
            except FalRequestRejected:
                if not self._ask_platform(item, "fal's queue result expired"):
                    return
                if item.action != "recover":
                    done = self.set_state(item, status=FAILED, error=item.error)
                    item.outcome = "done" if done else "skipped"
                    return
        if not item.images:
            self._fail_row(item, "fal returned no images")
            return
        images = self._store(item, deadline)
        if images is None:
            return
        if self.set_state(item, status=COMPLETED, result_urls=[i.key for i in images],
                          fal_request_id=item.fal_request_id, completed_at=utcnow(), error=None,
                          **fal_sizes(item.params, item.images)):
            item.outcome = "done"
        else:
            item.outcome, item.failed = "failed", True
            item.error = "the row changed while its images were stored"

    def _store(self, item: Item, deadline: Deadline) -> list[StoredImage] | None:
        """The item's images in storage; None when it ended otherwise: fal's verdict failed
        the row, or a fault that may pass (storage, the image host) left it as it was. An
        image URL that answers 404 is final only if fal's Platform API has no other."""
        try:
            return self.service.images.store(item.id, item.user_id, item.image_urls, deadline)
        except StorageError as e:
            item.outcome, item.failed, item.error = "failed", True, f"storage: {e.message}"
            return None
        except ImageGone as e:
            tried = item.image_urls
            if item.source == "queue":
                if not self._ask_platform(item, e.message):
                    return None
                if item.action == "recover" and item.image_urls != tried:
                    return self._store(item, deadline)
            self._fail_row(item, e.message)
        except FalError as e:
            if is_verdict(e):
                self._fail_row(item, e.message)
            else:
                item.outcome, item.failed, item.error = "failed", True, f"download: {e.message}"
        return None

    def _ask_platform(self, item: Item, reason: str) -> bool:
        """Look the request up in fal's Platform API; False when fal could not be asked (the
        row stays as it was)."""
        self.planner.from_platform(item, reason=reason)
        if item.failed:
            item.outcome = "failed"
        return not item.failed

    def _fail_row(self, item: Item, error: str) -> None:
        """fal's verdict: the row ends FAILED with `error`."""
        item.action, item.error = "fail", error
        item.outcome = "done" if self.set_state(item, status=FAILED, error=error) else "skipped"

    def _resubmit(self, item: Item) -> None:
        assert item.spec is not None and item.spec.model is not None
        self.service.preflight()
        if item.spec.model != item.endpoint:
            # a retired endpoint's row goes to IMAGEN4_MODEL: a later run must ask that one
            if not self.set_state(item, fal_endpoint=item.spec.model):
                item.outcome, item.error = "skipped", "changed since it was read"
                return
            item.endpoint = item.spec.model
        outcome = self.service.run(item.id, item.spec, Deadline(self.options.timeout),
                                   account_locked=self.account_locked)
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
        now = utcnow()
        return generations.claim(
            self.database, item.id, owner=self.token, status=item.status,
            fal_request_id=item.read_request_id, submit_marked=item.read_submit_mark, now=now,
            stale_before=now - self.stale_after, is_dead=claim_is_dead)

    def release(self, item: Item) -> None:
        generations.release(self.database, item.id, owner=self.token)

    def set_state(self, item: Item, **values: Any) -> bool:
        """A state change, only if the row is still as read and still ours."""
        changed = generations.change_claimed(self.database, item.id, expected=item.status,
                                             owner=self.token, **values)
        if changed and "status" in values:
            item.status = values["status"]
        return changed

    def _backup_and_delete(self, item: Item) -> None:
        backup = self.options.backup
        assert backup is not None
        row = generations.get(self.database, item.id)
        if row is None or row.claimed_by != self.token or row.status != item.status:
            item.outcome, item.error = "skipped", "changed since it was read"
            return
        append_backup(backup, backup_line(row))
        deleted = generations.delete_claimed(self.database, item.id, expected=item.status,
                                             owner=self.token)
        item.outcome = "done" if deleted else "skipped"

