"""What a running worker knows about itself: its health (which dependency is down, and why),
how long to back off, what it has done (the Prometheus families it adds to `imagen4ctl
metrics`'), the state changes it reports, and SQLite's one-worker lock."""

from __future__ import annotations

import fcntl
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from imagen4ctl.db.values import utcnow
from imagen4ctl.errors import UsageError
from imagen4ctl.services.metrics import PREFIX, Family

DEPENDENCIES = ("database", "storage", "fal")
ONE_SQLITE_WORKER = "SQLite serves one worker; use PostgreSQL for more"


@dataclass(frozen=True)
class WorkerEvent:
    """One line of the worker's log: a row's change of state, or the worker's own news."""

    message: str
    id: int | None = None
    user_id: str | None = None
    fal_request_id: str | None = None
    from_status: str | None = None
    to_status: str | None = None
    seconds: float | None = None
    reason: str | None = None
    level: str = "info"  # info, warning, error
    at: datetime = field(default_factory=utcnow)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "at": self.at.isoformat().replace("+00:00", "Z"), "level": self.level,
            "event": "state" if self.to_status else "worker", "message": self.message,
            "id": self.id, "user_id": self.user_id, "fal_request_id": self.fal_request_id,
            "from": self.from_status, "to": self.to_status,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "reason": self.reason,
        }
        return {k: v for k, v in data.items() if v is not None}

    def plain(self) -> str:
        when = self.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        parts = [when] + ([self.level.upper()] if self.level != "info" else [])
        if self.id is not None:
            parts.append(f"row {self.id}")
        if self.user_id is not None:
            parts.append(f"user {self.user_id}")
        if self.fal_request_id is not None:
            parts.append(f"request {self.fal_request_id}")
        if self.to_status:
            parts.append(f"{self.from_status or '-'} → {self.to_status}")
        if self.seconds is not None:
            parts.append(f"{self.seconds:.1f}s")
        text = " ".join(parts) + (f": {self.message}" if len(parts) > 1 and self.id is not None
                                  else f" {self.message}")
        return text + (f" ({self.reason})" if self.reason else "")


EventSink = Callable[[WorkerEvent], None]


class Backoff:
    """Exponential, with jitter (each delay drawn from its upper half), capped."""

    def __init__(self, *, base: float = 1.0, cap: float = 60.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 30))
        return ceiling * (0.5 + self._rng() / 2)

    def reset(self) -> None:
        self.failures = 0


class Health:
    """Which dependency is down and why; what /healthz answers. Thread-safe."""

    def __init__(self, *, stall_after: float) -> None:
        self._lock = threading.Lock()
        self._down: dict[str, str] = {}
        self.stall_after = stall_after
        self.started = False
        self.stopping = False
        self.turned = time.monotonic()  # the loop's last turn, failed passes included
        self.last_pass: float | None = None  # wall clock of the last successful pass

    def down(self, dependency: str, reason: str) -> bool:
        """Note a dependency down; True when that is news."""
        with self._lock:
            news = dependency not in self._down
            self._down[dependency] = " ".join(reason.split())[:300]
            return news

    def up(self, dependency: str) -> bool:
        """Note a dependency back; True when it had been down."""
        with self._lock:
            return self._down.pop(dependency, None) is not None

    def is_down(self, dependency: str) -> bool:
        with self._lock:
            return dependency in self._down

    def problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self._down)

    def stalled(self) -> float | None:
        """Seconds since the loop last turned, when that is too long to be a backoff."""
        idle = time.monotonic() - self.turned
        return idle if idle > self.stall_after else None

    def verdict(self) -> tuple[bool, str]:
        """(healthy, the text /healthz answers)."""
        stalled = self.stalled()
        if stalled is not None:
            return False, f"stalled: the loop has not turned for {stalled:.0f}s\n"
        if self.stopping:
            return False, "stopping\n"
        problems = self.problems()
        if problems:
            return False, "".join(f"{name}: {reason}\n" for name, reason in problems.items())
        if not self.started:
            return False, "starting\n"
        return True, "ok\n"


class Stats:
    """The worker's own counts and gauges, as Prometheus families. Thread-safe."""

    COUNTERS = {
        "claims": "Rows this worker claimed (queued and unattended).",
        "submissions": "Requests this worker submitted to fal (accepted: a request id).",
        "completions": "Rows this worker ended COMPLETED (its submissions and recoveries).",
        "failures": "Rows this worker ended FAILED (fal's verdict, or a row that cannot be "
                    "sent).",
        "recoveries": "Rows finished the fix-pending way: recovered, adopted or failed.",
        "requeued": "Submissions fal never took (unreachable, rate limit, key or account "
                    "refused): the row was queued again, not failed.",
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.loop_lag = 0.0

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def deliveries(self, answers: dict[int, int]) -> Family:
        """fal's webhook deliveries by the status they were answered (413s never reach the
        inbox: the HTTP server refuses them before reading)."""
        family = Family(f"{PREFIX}worker_webhook_deliveries_total", "counter",
                        "Webhook deliveries received, by the HTTP status they were answered "
                        "(200 taken, 401 refused, 503 deliver again).")
        for status, count in sorted(answers.items()):
            family.add(count, answer=str(status))
        return family

    def families(self, *, held: int, at_fal: int, fleet: float, cap: int,
                 health: Health) -> list[Family]:
        worker = f"{PREFIX}worker_"
        families = []
        with self._lock:
            counts = dict(self.counts)
        for name, help_text in self.COUNTERS.items():
            family = Family(f"{worker}{name}_total", "counter", help_text)
            family.add(counts[name])
            families.append(family)
        gauges: list[tuple[str, str, float]] = [
            ("rows_claimed", "Rows this worker holds now.", held),
            ("requests_in_flight", "This worker's requests at fal now (submitted, not yet "
             "answered).", at_fal),
            ("fleet_requests_in_flight", "Requests at fal for the whole fleet, as the table "
             "counts them (NaN: the database did not answer).", fleet),
            ("fleet_max_concurrent", "FAL_MAX_CONCURRENT: the fleet's cap.", cap),
            ("loop_lag_seconds", "How late the last pass started after it was due.",
             self.loop_lag),
            ("last_pass_timestamp_seconds", "Unix time of the last successful pass (0: none "
             "yet).", health.last_pass or 0.0),
            ("healthy", "1 when /healthz answers 200.", 1.0 if health.verdict()[0] else 0.0),
        ]
        for name, help_text, value in gauges:
            family = Family(f"{worker}{name}", "gauge", help_text)
            family.add(value)
            families.append(family)
        up = Family(f"{worker}dependency_up", "gauge",
                    "0 while the worker waits for this dependency to come back, else 1.")
        problems = health.problems()
        for name in DEPENDENCIES:
            up.add(0 if name in problems else 1, dependency=name)
        families.append(up)
        return families


def nan_on_error(count: Callable[[], int]) -> float:
    try:
        return float(count())
    except Exception:  # noqa: BLE001 - a scrape shows NaN rather than failing
        return math.nan


@contextmanager
def one_sqlite_worker(path: Path | None) -> Iterator[None]:
    """Hold an OS lock on a file next to the SQLite database while the worker runs: SQLite
    has no row locks to share work with, so a second worker exits with a usage error."""
    if path is None:
        yield
        return
    lock_path = path.with_name(path.name + ".worker.lock")
    handle: IO[str] = open(lock_path, "a+")  # noqa: SIM115 - held until the worker ends
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(ONE_SQLITE_WORKER,
                             hint="Stop the other worker, or set DATABASE_URL to PostgreSQL."
                             ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
