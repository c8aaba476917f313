"""reconcile: the database and the bucket agree, in the spirit of `rclone check`.

Problems: COMPLETED rows whose objects are missing or empty (`missing_object`), COMPLETED
rows without any key (`empty_result`), rows still pointing at fal's CDN (`fal_url`), and
objects under imagen4ctl's own prefix that no row names (`orphan_object`). Everything
streams: rows with `yield_per`, objects page by page, row lookups in batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from imagen4ctl.adapters.storage import ObjectInfo
from imagen4ctl.db import generations
from imagen4ctl.db.generations import GenerationRow
from imagen4ctl.db.values import utcnow
from imagen4ctl.deadline import Deadline
from imagen4ctl.errors import Imagen4ctlError
from imagen4ctl.keys import is_remote, parse_object_key, user_prefix
from imagen4ctl.services.recovery import Recovery

PROBLEMS = ("missing_object", "empty_result", "fal_url", "orphan_object")
ORPHAN_MIN_AGE = timedelta(hours=1)  # younger objects may be uploads still in flight
_BATCH = 500


@dataclass
class Problem:
    type: str
    id: int | None
    key: str | None
    detail: str
    action: str = "none"  # what --fix did: refetched, failed, copied, deleted, left
    fixed: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ReconcileReport:
    fix: bool
    rows_checked: int = 0
    objects_checked: int = 0
    items: list[Problem] = field(default_factory=list)

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.items if not p.fixed]

    @property
    def ok(self) -> bool:
        return not self.remaining

    def to_json(self) -> dict[str, Any]:
        return {
            "fix": self.fix, "rows_checked": self.rows_checked,
            "objects_checked": self.objects_checked,
            "problems": {t: sum(1 for p in self.items if p.type == t) for t in PROBLEMS},
            "items": [p.to_json() for p in self.items], "ok": self.ok,
        }


class Reconciler:
    def __init__(self, recovery: Recovery, *, prefix: str, kind: str = "imagen4",
                 user_id: str | None = None, fix: bool = False, concurrency: int = 8) -> None:
        self.recovery = recovery
        self.service = recovery.service
        self.storage = recovery.service.storage
        self.prefix = prefix
        self.kind = kind
        self.user_id = user_id
        self.fix = fix
        self.concurrency = concurrency

    def run(self) -> ReconcileReport:
        """reconcile: rows against objects, then objects against rows; `fix` repairs."""
        if self.fix:
            self.service.require_fal("--fix needs it to fetch images again")
        report = ReconcileReport(self.fix)
        self._check_rows(report)
        self._check_objects(report)
        return report

    # --- rows → objects ---

    def _completed_rows(self) -> Iterator[GenerationRow]:
        return generations.stream_completed(self.service.database, kind=self.kind,
                                            user_id=self.user_id, batch=_BATCH)

    def _check_rows(self, report: ReconcileReport) -> None:
        def check(row: GenerationRow) -> list[Problem]:
            keys = [k for k in (row.result_urls or []) if isinstance(k, str)]
            if not keys:
                return [Problem("empty_result", row.id, None, "COMPLETED without result_urls")]
            found = []
            for key in keys:
                if is_remote(key):
                    found.append(Problem("fal_url", row.id, key,
                                         "points at fal's CDN, which expires"))
                    continue
                info = self.storage.stat(key)
                if info is None or info.size == 0:
                    detail = "object missing" if info is None else "object is empty"
                    found.append(Problem("missing_object", row.id, key, detail))
            return found

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            rows = self._completed_rows()
            while True:
                batch = [row for _, row in zip(range(_BATCH), rows, strict=False)]
                if not batch:
                    break
                report.rows_checked += len(batch)
                for row, problems in zip(batch, pool.map(check, batch), strict=True):
                    if problems and self.fix:
                        self._fix_row(row, problems)
                    report.items.extend(problems)

    def _fix_row(self, row: GenerationRow, problems: list[Problem]) -> None:
        if any(p.type in {"missing_object", "empty_result"} for p in problems):
            self._refetch(row, problems)
        else:
            self._copy_fal_urls(row, problems)

    def _refetch(self, row: GenerationRow, problems: list[Problem]) -> None:
        """Fetch the images again from fal when it still has the request; else FAILED."""
        item = self.recovery.item_for(row, utcnow())
        self.recovery.planner.decide(item, row.submit_started_at)
        if item.action == "fail" and item.fal_request_id is None:
            item.error = "images missing from storage, and no fal request to fetch them from"
        if item.action not in {"recover", "fail"}:
            for p in problems:
                p.action = "left"
                p.detail += f"; {item.error or 'fal says ' + str(item.fal_status)}"
            return
        self.recovery.apply_item(item)
        done = item.outcome == "done"
        for p in problems:
            p.action = ("refetched" if item.action == "recover" else "failed") if done else "left"
            p.fixed = done
            if item.error:
                p.detail += f"; {item.error}"

    def _copy_fal_urls(self, row: GenerationRow, problems: list[Problem]) -> None:
        """Copy fal-hosted images into the bucket now, before fal's media expires."""
        item = self.recovery.item_for(row, utcnow())
        if not self.recovery.claim(item):
            for p in problems:
                p.action, p.detail = "left", p.detail + "; held by another run"
            return
        try:
            keys = self.service.images.copy_remote(row.id, row.user_id,
                                                   list(row.result_urls or []), Deadline(300.0))
            ok = self.recovery.set_state(item, result_urls=keys)
        except Imagen4ctlError as e:
            ok = False
            for p in problems:
                p.detail += f"; {e.message}"
        finally:
            self.recovery.release(item)
        for p in problems:
            p.action, p.fixed = ("copied", True) if ok else ("left", False)

    # --- objects → rows ---

    def _objects(self) -> Iterator[ObjectInfo]:
        prefix = user_prefix(self.prefix, self.user_id) if self.user_id else self.prefix
        yield from self.storage.list(prefix)

    def _check_objects(self, report: ReconcileReport) -> None:
        objects = self._objects()
        while True:
            batch = [info for _, info in zip(range(_BATCH), objects, strict=False)]
            if not batch:
                return
            report.objects_checked += len(batch)
            named = self._keys_named_by_rows(batch)
            now = utcnow()
            for info in batch:
                if info.key in named:
                    continue
                young = now - info.last_modified < ORPHAN_MIN_AGE
                problem = Problem("orphan_object", None, info.key,
                                  "no row names this object" + (" (younger than an hour: "
                                                                "maybe an upload in flight)"
                                                                if young else ""))
                if self.fix and not young:
                    try:
                        self.storage.delete(info.key)
                        problem.action, problem.fixed = "deleted", True
                    except Imagen4ctlError as e:
                        problem.action, problem.detail = "left", problem.detail + f"; {e.message}"
                elif self.fix:
                    problem.action = "left"
                report.items.append(problem)

    def _keys_named_by_rows(self, batch: list[ObjectInfo]) -> set[str]:
        ids = set()
        for info in batch:
            parsed = parse_object_key(self.prefix, info.key)
            if parsed is not None:
                ids.add(parsed.generation_id)
        if not ids:
            return set()
        named: set[str] = set()
        for keys in generations.result_urls_of(self.service.database, ids):
            named.update(k for k in (keys or []) if isinstance(k, str))
        return named

