"""Prometheus metrics: gauges the database computes on every scrape, the health probes as 0/1,
and the text exposition format (0.0.4). Served by `httpd.py` (the stdlib's http.server).

Every value is a gauge (database counts go down when rows are fixed or deleted) except the
latency summary. Label values stay bounded: kinds past MAX_KINDS and unknown statuses past
MAX_OTHER_STATUSES fold into "other", whatever the bot writes. No Typer or Rich here.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING

from imagen4ctl import __version__
from imagen4ctl.db import generations
from imagen4ctl.db.values import STATUSES, utcnow
from imagen4ctl.errors import Imagen4ctlError
from imagen4ctl.services.health import (
    COMPONENTS,
    HealthCheck,
    probe_components,
    stuck_summary,
    success_window,
)
from imagen4ctl.services.httpd import Handler, HttpServer, Reply, Request

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from imagen4ctl.db.session import Database
    from imagen4ctl.settings import Settings

PREFIX = "imagen4ctl_"
OTHER = "other"
MAX_KINDS = 20
MAX_OTHER_STATUSES = 10
SUCCESS_WINDOWS: tuple[tuple[str, float], ...] = (("1h", 3600.0), ("24h", 86400.0))
LATENCY_WINDOW: tuple[str, float] = ("1h", 3600.0)
QUANTILES = (0.5, 0.9, 0.99)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# --------------------------------------------------------------------------- the format


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float
    suffix: str = ""  # `_sum`, `_count` of a summary


@dataclass
class Family:
    name: str
    type: str  # gauge or summary
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append(Sample(tuple(labels.items()), value, suffix))


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def exposition(families: list[Family]) -> str:
    """The Prometheus text format: HELP and TYPE before each family's samples."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{escape_label(v)}"' for k, v in sample.labels)
            shown = f"{{{labels}}}" if labels else ""
            lines.append(f"{family.name}{sample.suffix}{shown} {format_value(sample.value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- queries


def generation_counts(session: Session, *, max_kinds: int = MAX_KINDS,
                      max_other_statuses: int = MAX_OTHER_STATUSES
                      ) -> dict[tuple[str, str], int]:
    """{(kind, status): rows}, kinds and unknown statuses past their limits folded into OTHER,
    so that label values stay bounded whatever the bot writes."""
    return generations.bounded_counts(session, max_kinds=max_kinds,
                                      max_other_statuses=max_other_statuses, other=OTHER)


@dataclass(frozen=True)
class LatencySummary:
    quantiles: dict[float, float | None]  # over rows completed in the window
    total_seconds: float  # over every COMPLETED row with both timestamps
    count: int


def latency_summary(session: Session, *, window: float,
                    now: datetime | None = None) -> LatencySummary:
    """Submission to completion (`submitted_at` → `completed_at`) of COMPLETED rows."""
    now = now or utcnow()
    total, count = generations.latency_total(session)
    quantiles = generations.latency_quantiles(
        session, since=now - timedelta(seconds=window), quantiles=QUANTILES)
    return LatencySummary(quantiles, total, count)


# --------------------------------------------------------------------------- the families


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def count_families(counts: dict[tuple[str, str], int]) -> list[Family]:
    family = Family(f"{PREFIX}generations", "gauge",
                    f"Generations in the database by kind and status (past {MAX_KINDS} kinds "
                    f"and {MAX_OTHER_STATUSES} unknown statuses the rest count as {OTHER!r}).")
    kinds = sorted({k for k, _ in counts})
    for kind in kinds:  # known statuses always, so a fixed series drops to 0, not away
        present = {s for k, s in counts if k == kind}
        for status in [*STATUSES, *sorted(present - set(STATUSES))]:
            family.add(counts.get((kind, status), 0), kind=kind, status=status)
    return [family]


class MetricsCollector:
    """Computes fresh families on every call; one database engine for all scrapes."""

    def __init__(self, settings: Settings, *, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._database: Database | None = None
        self._lock = threading.Lock()

    def database(self) -> Database:
        from imagen4ctl.db.session import Database

        with self._lock:
            if self._database is None:
                self._database = Database(self.settings.database_url,
                                          connect_timeout=self.timeout)
            return self._database

    def close(self) -> None:
        if self._database is not None:
            self._database.dispose()

    def render(self) -> str:
        return exposition(self.collect())

    def collect(self, now: datetime | None = None) -> list[Family]:
        now = now or utcnow()
        checks = probe_components(self.settings, self.timeout)
        families: list[Family] = []
        if checks[0].ok:  # the database answers; a missing table leaves its families out
            families += self._database_families(now)
        return [*families, self._checks_family(checks), self._info_family()]

    def _database_families(self, now: datetime) -> list[Family]:
        families: list[Family] = []
        parts: list[Callable[[Session], list[Family]]] = [
            lambda s: count_families(generation_counts(s)),
            lambda s: self._stuck_families(s, now),
            lambda s: self._success_families(s, now),
            lambda s: self._latency_families(s, now),
        ]
        for part in parts:  # each on its own: an old schema without latency columns
            try:            # still gets its counts
                with self.database().bounded_session(self.timeout) as session:
                    families += part(session)
            except Imagen4ctlError:
                continue
        return families

    def _stuck_families(self, session: Session, now: datetime) -> list[Family]:
        stuck = stuck_summary(session, stuck_after=self.settings.stuck_after, now=now)
        count = Family(f"{PREFIX}generations_stuck", "gauge",
                       "PENDING/PROCESSING generations unchanged for longer than STUCK_AFTER "
                       "(`imagen4ctl fix-pending` recovers them).")
        count.add(stuck.count)
        oldest = Family(f"{PREFIX}generations_stuck_oldest_age_seconds", "gauge",
                        "Seconds since the oldest stuck generation was created (0: none).")
        oldest.add(stuck.oldest_seconds or 0)
        return [count, oldest]

    def _success_families(self, session: Session, now: datetime) -> list[Family]:
        ratio = Family(f"{PREFIX}generation_success_ratio", "gauge",
                       "COMPLETED / (COMPLETED + FAILED + stuck) among generations created in "
                       "the window (NaN: none).")
        samples = Family(f"{PREFIX}generation_success_samples", "gauge",
                         "COMPLETED + FAILED + stuck generations created in the window.")
        for label, seconds in SUCCESS_WINDOWS:
            window = success_window(session, window=seconds,
                                    stuck_after=self.settings.stuck_after, now=now)
            ratio.add(_nan(window.ratio), window=label)
            samples.add(window.samples, window=label)
        return [ratio, samples]

    def _latency_families(self, session: Session, now: datetime) -> list[Family]:
        label, seconds = LATENCY_WINDOW
        summary = latency_summary(session, window=seconds, now=now)
        family = Family(f"{PREFIX}generation_latency_seconds", "summary",
                        f"Submission to completion of COMPLETED generations: quantiles over "
                        f"the last {label} (NaN: none), sum and count over all.")
        for q in QUANTILES:
            family.add(_nan(summary.quantiles[q]), quantile=format_value(q))
        family.add(summary.total_seconds, "_sum")
        family.add(summary.count, "_count")
        return [family]

    def _checks_family(self, checks: list[HealthCheck]) -> Family:
        family = Family(f"{PREFIX}check_ok", "gauge",
                        "1 when the check passes (as `imagen4ctl health` runs it), else 0.")
        by_name = {c.name: c for c in checks}
        for name in COMPONENTS:
            family.add(1 if by_name[name].ok else 0, check=name)
        return family

    def _info_family(self) -> Family:
        settings = self.settings
        family = Family(f"{PREFIX}info", "gauge",
                        "Always 1: the version, fal model, storage and where the fal key was "
                        "read from (FAL_API_KEY: fal_client itself finds no key).")
        family.add(1, version=__version__, model=settings.model,
                   storage="s3" if settings.raw("MINIO_ENDPOINT") else "local",
                   fal_key_source=settings.fal_key.source or "none")
        return family


# --------------------------------------------------------------------------- serving


def routes(render: Callable[[], str]) -> dict[tuple[str, str], Handler]:
    """GET /metrics answers `render()`; a scrape that fails is a 500, and the next one runs."""

    def scrape(_request: Request) -> Reply:
        try:
            return Reply(200, render().encode(), CONTENT_TYPE)
        except Exception as e:  # noqa: BLE001 - one bad scrape must not stop the server
            return Reply.text(500, f"scrape failed: {type(e).__name__}\n")

    return {("GET", "/metrics"): scrape,
            ("GET", "/"): lambda _r: Reply.text(200, "imagen4ctl metrics: see /metrics\n")}


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # Kubernetes stops pods with SIGTERM: leave as cleanly as Ctrl-C


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(render: Callable[[], str], *, bind: str, port: int,
          ready: Callable[[str], None] | None = None) -> None:
    """Answer GET /metrics with `render()` until Ctrl-C or SIGTERM, then return normally."""
    server = HttpServer(routes(render), host=bind, port=port,
                        not_found=Reply.text(404, "not found: try /metrics\n"),
                        hint="Pick another --serve port, or check --bind.")
    try:
        with _stop_on_sigterm():
            if ready is not None:
                ready(server.url("/metrics"))
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
