"""The verdict behind `health`: the doctor's probes (storage read-only) plus stuck rows and the
success ratio, counted by the database. Nagios levels: OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3.
No Typer or Rich here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from imagen4ctl.db import generations
from imagen4ctl.db.values import utcnow
from imagen4ctl.durations import format_duration
from imagen4ctl.errors import Imagen4ctlError
from imagen4ctl.services import doctor

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from imagen4ctl.settings import Settings

Level = Literal["OK", "WARNING", "CRITICAL", "UNKNOWN"]
EXIT_CODES: dict[Level, int] = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
# Which level wins when checks disagree: a real warning says more than "could not tell".
_SEVERITY: dict[Level, int] = {"OK": 0, "UNKNOWN": 1, "WARNING": 2, "CRITICAL": 3}
COMPONENTS = ("database", "schema", "storage", "fal_api")
FIX_PENDING = "run `imagen4ctl fix-pending`"
DB_UPGRADE = "run `imagen4ctl db upgrade`"
CHECK_CONFIG = "see `imagen4ctl check-config`"
_COMMAND = re.compile(r"`(imagen4ctl [^`]+)`")


@dataclass(frozen=True)
class Thresholds:
    max_stuck: int = 0
    min_success: float = 0.9
    window_seconds: float = 3600.0
    window_label: str = "1h"  # as the operator typed it, for messages
    min_samples: int = 10


@dataclass(frozen=True)
class HealthCheck:
    name: str
    status: Level
    message: str
    hint: str | None = None  # the command that fixes it, when the check is not OK

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status, "message": self.message,
                "hint": self.hint}


@dataclass(frozen=True)
class StuckSummary:
    count: int
    oldest_seconds: int | None  # since the oldest stuck row was created


@dataclass(frozen=True)
class SuccessWindow:
    """Rows created in the window: stuck ones count as failures (the incident never FAILED)."""

    completed: int
    failed: int
    stuck: int

    @property
    def samples(self) -> int:
        return self.completed + self.failed + self.stuck

    @property
    def ratio(self) -> float | None:
        return self.completed / self.samples if self.samples else None


@dataclass
class HealthReport:
    checks: list[HealthCheck]
    thresholds: Thresholds
    stuck: StuckSummary | None = None
    window: SuccessWindow | None = None

    @property
    def status(self) -> Level:
        return worst(c.status for c in self.checks)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def summary(self) -> str:
        """The verdict in one line: the worst checks with their fix, or what was found fine."""
        status = self.status
        if status != "OK":
            return "; ".join(dict.fromkeys(  # stuck and success_ratio may share a reason
                c.message + (f" — {c.hint}" if c.hint else "")
                for c in self.checks if c.status == status))
        return "; ".join(c.message for c in self.checks if c.name in {"stuck", "success_ratio"}) \
            + "; " + ", ".join(c.name for c in self.checks if c.name in COMPONENTS) + " ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "checks": [c.to_json() for c in self.checks],
            "stuck": self.stuck.count if self.stuck else None,
            "success_ratio": _rounded(self.window.ratio) if self.window else None,
            "samples": self.window.samples if self.window else 0,
        }


def worst(levels: Iterable[Level]) -> Level:
    return max(levels, key=_SEVERITY.__getitem__, default="OK")


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def percent(ratio: float) -> str:
    text = f"{ratio * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


# --------------------------------------------------------------------------- probes


def fix_for(hint: str | None) -> str:
    """The doctor's hint as a fix: the `imagen4ctl …` command it names, else check-config."""
    match = _COMMAND.search(hint or "")
    if match is None or match.group(1) == "imagen4ctl check-config":
        return CHECK_CONFIG
    return f"run `{match.group(1)}`"


def _from_doctor(check: doctor.Check, *, warn_is_ok: bool) -> HealthCheck:
    if check.status == "ok" or (check.status == "warn" and warn_is_ok):
        return HealthCheck(check.name, "OK", check.message)
    return HealthCheck(check.name, "CRITICAL", check.message, fix_for(check.hint))


def _guarded(name: str, probe: Callable[[], HealthCheck]) -> HealthCheck:
    """A probe that raised is CRITICAL with its own message; a bug in one is UNKNOWN."""
    try:
        return probe()
    except Imagen4ctlError as e:
        return HealthCheck(name, "CRITICAL", e.message, fix_for(e.hint))
    except Exception as e:  # noqa: BLE001 - the other checks still answer
        return HealthCheck(name, "UNKNOWN", f"unexpected {type(e).__name__} while checking "
                           f"{name}: {e}", CHECK_CONFIG)


def check_database(settings: Settings, timeout: float) -> HealthCheck:
    check = doctor.check_database(settings, timeout, offline=False)
    if check.status == "warn":  # no SQLite file yet: nothing can have been recorded
        return HealthCheck("database", "CRITICAL", check.message, DB_UPGRADE)
    return _from_doctor(check, warn_is_ok=False)


def check_schema(settings: Settings, timeout: float) -> HealthCheck:
    return _from_doctor(doctor.check_schema(settings, timeout), warn_is_ok=False)


def check_storage(settings: Settings, timeout: float) -> HealthCheck:
    """Read-only: the bucket exists and lists with these credentials; nothing is written.

    The local folder is the doctor's own check, which writes nothing either; using it
    instead of a bucket is a choice, not a fault, so its warning is OK here.
    """
    if settings.minio_endpoint is None:
        return _from_doctor(doctor.check_storage(settings, timeout, offline=False),
                            warn_is_ok=True)
    storage = doctor.open_bucket(settings, timeout)  # raises: CRITICAL, via _guarded
    next(iter(storage.list(settings.images_prefix)), None)  # proves the key may read
    return HealthCheck("storage", "OK", f"{storage.describe()} exists and lists (read-only "
                       "check)")


def check_fal(settings: Settings, timeout: float) -> HealthCheck:
    """The doctor's zero-cost probe: the status of a request id that cannot exist."""
    credentials = doctor.check_fal_credentials(settings)
    if credentials.status == "fail":
        return HealthCheck("fal_api", "CRITICAL", credentials.message, CHECK_CONFIG)
    return _from_doctor(doctor.check_fal_api(settings, timeout), warn_is_ok=False)


def probe_components(settings: Settings, timeout: float) -> list[HealthCheck]:
    """database, schema, storage, fal_api — the three independent ones at once, so the
    whole probe takes about as long as the slowest of them, not their sum."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="imagen4ctl-probe") as pool:
        storage = pool.submit(_guarded, "storage", lambda: check_storage(settings, timeout))
        fal = pool.submit(_guarded, "fal_api", lambda: check_fal(settings, timeout))
        database = _guarded("database", lambda: check_database(settings, timeout))
        if database.ok:
            schema = _guarded("schema", lambda: check_schema(settings, timeout))
        else:
            schema = HealthCheck("schema", "UNKNOWN", "not checked: the database is not usable",
                                 database.hint)
        return [database, schema, storage.result(), fal.result()]


# --------------------------------------------------------------------------- counts


def stuck_summary(session: Session, *, stuck_after: float,
                  now: datetime | None = None) -> StuckSummary:
    """PENDING/PROCESSING unchanged for longer than `stuck_after`, of any kind: one query."""
    now = now or utcnow()
    count, created = generations.stuck_count_and_oldest(
        session, cutoff=now - timedelta(seconds=stuck_after))
    age = max(0, int((now - created).total_seconds())) if created is not None else None
    return StuckSummary(count, age if count else None)


def success_window(session: Session, *, window: float, stuck_after: float,
                   now: datetime | None = None) -> SuccessWindow:
    """COMPLETED, FAILED and stuck among the rows created in the last `window` seconds."""
    now = now or utcnow()
    completed, failed, stuck = generations.outcomes_since(
        session, since=now - timedelta(seconds=window),
        stuck_cutoff=now - timedelta(seconds=stuck_after))
    return SuccessWindow(completed, failed, stuck)


def _stuck_check(summary: StuckSummary, limit: int) -> HealthCheck:
    if summary.count <= limit:
        detail = "no stuck generations" if not summary.count else \
            f"{summary.count} stuck generation{'s' if summary.count != 1 else ''}"
        return HealthCheck("stuck", "OK", f"{detail} (max {limit})")
    oldest = format_duration(summary.oldest_seconds or 0)
    plural = "s" if summary.count != 1 else ""
    return HealthCheck("stuck", "CRITICAL", f"{summary.count} stuck generation{plural} "
                       f"(max {limit}), oldest {oldest}", FIX_PENDING)


def _success_check(window: SuccessWindow, limits: Thresholds) -> HealthCheck:
    span = f"the last {limits.window_label}"
    ratio = window.ratio
    if ratio is None:
        return HealthCheck("success_ratio", "OK", f"no finished generations in {span}")
    counts = f"{window.completed} completed, {window.failed} failed, {window.stuck} stuck"
    if window.samples < limits.min_samples:
        return HealthCheck("success_ratio", "OK",
                           f"success ratio {percent(ratio)} over {span} ({counts}): fewer than "
                           f"{limits.min_samples} generations, not judged")
    if ratio < limits.min_success:
        fix = FIX_PENDING if window.stuck else \
            "see `imagen4ctl user-images` and `imagen4ctl check-config`"
        return HealthCheck("success_ratio", "WARNING",
                           f"success ratio {percent(ratio)} over {span} (min "
                           f"{percent(limits.min_success)}; {counts})", fix)
    return HealthCheck("success_ratio", "OK", f"success ratio {percent(ratio)} over {span} "
                       f"(min {percent(limits.min_success)}; {counts})")


def assess(settings: Settings, limits: Thresholds, *, timeout: float = 5.0,
           now: datetime | None = None) -> HealthReport:
    """Every check, each bounded by `timeout`; never raises for what it finds."""
    from imagen4ctl.db.session import Database

    checks = probe_components(settings, timeout)
    report = HealthReport(checks, limits)
    if not checks[0].ok:  # no database, no counts: say so instead of guessing
        reason = "not counted: the database is not usable"
        checks += [HealthCheck("stuck", "UNKNOWN", reason, checks[0].hint),
                   HealthCheck("success_ratio", "UNKNOWN", reason, checks[0].hint)]
        return report
    now = now or utcnow()
    try:
        stuck_after = settings.stuck_after
        database = Database(settings.database_url, connect_timeout=timeout)
        try:
            with database.bounded_session(timeout) as session:
                report.stuck = stuck_summary(session, stuck_after=stuck_after, now=now)
                report.window = success_window(session, window=limits.window_seconds,
                                               stuck_after=stuck_after, now=now)
        finally:
            database.dispose()
    except Imagen4ctlError as e:  # e.g. the table is missing: the schema check says why
        reason = f"not counted: {e.message}"
        checks += [HealthCheck("stuck", "UNKNOWN", reason, fix_for(e.hint)),
                   HealthCheck("success_ratio", "UNKNOWN", reason, fix_for(e.hint))]
        return report
    checks += [_stuck_check(report.stuck, limits.max_stuck),
               _success_check(report.window, limits)]
    return report
