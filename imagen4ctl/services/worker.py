"""`imagen4ctl worker`: the loop that sees every row of a kind through to COMPLETED or FAILED.

A controller, as in Kubernetes: each pass compares the table with what fal says and moves
rows one step, idempotently, so a crash at any line is repaired by the next pass (of this
worker or another). The steps are the ones `generate` and `fix-pending` take — queued rows
go through `GenerationService.run`, unattended ones through `Recovery` — never a second
implementation. Rows are held by claims in the row (`claimed_by`, `claimed_at`), renewed by
a heartbeat; the fleet's requests at fal are counted in the table and capped with one lock
(db/generations/claims.py). Signals only set events; the loop waits on events, never sleeps.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagen4ctl.db import generations
from imagen4ctl.db.values import IMAGEN4, utcnow
from imagen4ctl.endpoints import endpoint_named
from imagen4ctl.errors import (
    DatabaseError,
    FalError,
    Imagen4ctlError,
    StorageError,
    UsageError,
)
from imagen4ctl.services.metrics import exposition
from imagen4ctl.services.webhooks import (
    WebhookInbox,
    check_webhook_options,
    serve_webhooks,
    shares_server,
)
from imagen4ctl.services.worker_rows import WorkerRows, failed_dependency
from imagen4ctl.services.worker_state import (
    Backoff,
    EventSink,
    Health,
    Stats,
    WorkerEvent,
    nan_on_error,
    one_sqlite_worker,
)

if TYPE_CHECKING:
    from imagen4ctl.services.httpd import HttpServer, Reply, Request
    from imagen4ctl.services.metrics import Family
    from imagen4ctl.services.recovery import Recovery

STORAGE_CHECK_EVERY = 5.0  # seconds between bucket checks while storage is fine
HANDED_BACK = "handed back: the worker stopped before this row was done"


@dataclass(frozen=True)
class WorkerOptions:
    kind: str = IMAGEN4
    concurrency: int = 2  # requests at fal from this process; twice as many rows at once
    once: bool = False
    grace: float = 30.0
    claim_timeout: float = 60.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    idle: float = 0.5  # seconds between passes when nothing wakes the loop sooner
    webhook_url: str | None = None  # fal POSTs each request's end there (services/webhooks.py)
    webhook_port: int | None = None  # ... and it is received on this port
    webhook_host: str = "127.0.0.1"
    webhook_grace: float = 60.0  # a row waits this long for it before it is followed
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, not {self.concurrency}")
        if self.grace < 0:
            raise UsageError(f"--grace cannot be negative ({self.grace:g})")
        if self.claim_timeout <= 0:
            raise UsageError(f"--claim-timeout must be positive ({self.claim_timeout:g})")
        check_webhook_options(self.webhook_url, self.webhook_port, self.webhook_host,
                              self.metrics_port, self.metrics_host)


@dataclass
class WorkerReport:
    """How the run ended, for the command's exit code (fix-pending's, with --once)."""

    ok: bool = True
    abandoned: int = 0  # rows still being worked on by threads when it stopped


class Worker:
    def __init__(self, recovery: Recovery, *, options: WorkerOptions, cap: int,
                 on_event: EventSink,
                 metrics: Callable[[], list[Family]] | None = None,
                 scrub: Callable[[str], str] = lambda text: text,
                 webhooks: WebhookInbox | None = None) -> None:
        self.options = options
        self.recovery = recovery
        self.service = recovery.service
        self.database = recovery.service.database
        self.cap = cap
        self.emit = on_event
        self.scrub = scrub
        self.metrics = metrics
        self.stop = threading.Event()  # set by the first signal: claim nothing more
        self.hurry = threading.Event()  # set by the second: hand everything back now
        self.wake = threading.Event()  # a finished task, a signal: pass again now
        self.closed = threading.Event()
        self.health = Health(stall_after=max(120.0, 2 * options.max_backoff))
        self.stats = Stats()
        self.backoff = Backoff(cap=options.max_backoff)
        self.report = WorkerReport()
        self.rows = WorkerRows(self)
        self._signals = 0
        self._storage_checked = -STORAGE_CHECK_EVERY
        self._server: HttpServer | None = None
        self.webhooks = webhooks  # fal's deliveries, on the metrics server or one of their own
        self._webhook_server: HttpServer | None = None

    # --- the run ---

    def run(self) -> WorkerReport:
        """Start (or refuse to, having claimed nothing), loop until a signal (or, with
        `once`, until nothing is left to do), then finish or hand back what is in flight."""
        with ExitStack() as stack:
            stack.callback(self._close)  # also when it refuses to start: no server left open
            self._start(stack)
            stack.enter_context(self._signals_set_events())
            threading.Thread(target=self._heartbeat, name="worker-heartbeat",
                             daemon=True).start()
            self.emit(WorkerEvent(
                f"started: {self.options.kind} rows, {self.options.concurrency} at fal from "
                f"this worker, {self.cap} for the fleet (FAL_MAX_CONCURRENT)"
                + (f", metrics at {self._server.url('/metrics')}" if self._server else "")
                + (f", fal's webhooks at {self.options.webhook_url}" if self.webhooks else "")))
            try:
                self._once() if self.options.once else self._loop()
            finally:
                self._drain()
        return self.report

    def _start(self, stack: ExitStack) -> None:
        """What must hold before anything is claimed: a fal key, a known IMAGEN4_MODEL, a
        database that answers with the current schema (on SQLite, no other worker), and the
        metrics port. The bucket may still be down: that is waited out (not with --once)."""
        from imagen4ctl.db.migrate import require_current

        self.service.require_fal("nothing was claimed")
        endpoint_named(self.recovery.default_model, source="IMAGEN4_MODEL")
        require_current(self.database)
        if self.database.is_sqlite:
            stack.enter_context(one_sqlite_worker(self.database.sqlite_path))
        generations.claim_owners(self.database)  # the statements' path answers too
        if self.options.metrics_port is not None:
            self._server = self._serve()
        if self.webhooks is not None and not shares_server(self.options):
            self._webhook_server = serve_webhooks(self.webhooks, self.options)
        try:
            self._check_storage(force=True)
        except StorageError as e:
            if self.options.once:
                raise
            self._down("storage", e.message)

    def _loop(self) -> None:
        due = time.monotonic()
        while not self.stop.is_set():
            self.wake.wait(max(0.0, due - time.monotonic()))
            if self.stop.is_set():
                break
            now = time.monotonic()
            self.health.turned = now
            if now < due and self.health.problems():
                self.wake.clear()  # backing off: a finished task is no reason to retry sooner
                continue
            self.wake.clear()
            self.stats.loop_lag = max(0.0, now - due)
            if self._pass() is not None and not self.health.problems():
                self.backoff.reset()
                due = time.monotonic() + self.options.idle
            else:
                due = time.monotonic() + self.backoff.next()

    def _once(self) -> None:
        """Passes until one starts nothing and nothing runs: the table as it was at the start,
        as far as it can be done now. A dependency down ends it: exit 1, said why."""
        self.rows.created_before = utcnow()
        while not self.stop.is_set():
            self.health.turned = time.monotonic()
            started = self._pass(raise_outage=True)
            if not started and not self.rows.busy():
                return
            self.wake.wait(0.5)
            self.wake.clear()

    def _pass(self, *, raise_outage: bool = False) -> int | None:
        """One look at the table: start what can be started; how many rows it took. None
        when a dependency is down (the loop then backs off); with `raise_outage`, that is
        an error instead."""
        try:
            scan = self.rows.scan_due()
            dead = self.rows.dead_owners() if scan else self.rows.dead
            self.rows.flush_releases()
            self._up("database")
            self._check_storage()
            self._check_fal()
            if raise_outage and self.health.problems():
                self._raise_outage()
            started = 0
            if not self.stop.is_set():
                started += self.rows.claim_queued(dead)
                if scan:
                    started += self.rows.take_unattended(dead)
        except (DatabaseError, StorageError, FalError) as e:
            if raise_outage:
                self.report.ok = False
                raise
            self._down(failed_dependency(e), e.message)
            return None
        problems = self.health.problems()
        if problems and raise_outage:
            self._raise_outage()
        if not problems:
            self.health.last_pass = time.time()
            self.health.started = True
        return started

    # --- dependencies ---

    def _raise_outage(self) -> None:
        """--once does not wait a dependency out: it ends, exit 1, saying which."""
        self.report.ok = False
        name, reason = next(iter(self.health.problems().items()))
        raise _outage(name, reason)

    def _check_storage(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self.health.is_down("storage") and \
                now - self._storage_checked < STORAGE_CHECK_EVERY:
            return
        storage = self.service.storage
        storage.create_if_missing()
        if not storage.bucket_exists():
            raise StorageError(f"{storage.describe()} does not exist",
                               hint="Create it, or set MINIO_BUCKET / IMAGES_DIR.")
        self._storage_checked = now
        self._up("storage")

    def _check_fal(self) -> None:
        """While fal is down, one free status probe per pass; once it answers, a refusal
        (locked account, rate limit) is tested by one submission, the canary."""
        if not self.health.is_down("fal"):
            return
        from imagen4ctl.adapters.fal import probe_key

        fal = self.service.require_fal()
        verdict = probe_key(fal.key, self.recovery.default_model, timeout=10.0,
                            key_source=fal.key_source)
        if not verdict.accepted:
            raise FalError(verdict.message, hint=verdict.hint)
        if not self.rows.refused:
            self._up("fal")

    def down(self, dependency: str, reason: str) -> None:
        """A task saw a dependency fail: the loop backs off until it is back."""
        self._down(dependency, reason)
        self.wake.set()

    def _down(self, dependency: str, reason: str) -> None:
        if self.health.down(dependency, reason):
            self.emit(WorkerEvent(f"{dependency} is down, waiting for it", reason=reason,
                                  level="warning"))

    def _up(self, dependency: str) -> None:
        if self.health.up(dependency):
            self.emit(WorkerEvent(f"{dependency} is back"))

    def fal_answered(self) -> None:
        """A submission was accepted: fal takes requests again."""
        self.rows.refused = False
        self._up("fal")

    # --- claims: heartbeat, signals, the end ---

    def _heartbeat(self) -> None:
        """Renew this worker's claims well within --claim-timeout, whatever the loop does."""
        every = self.options.claim_timeout / 4
        while not self.closed.wait(every):
            try:
                self.rows.renew()
            except Imagen4ctlError as e:
                self.down("database", e.message)

    @contextmanager
    def _signals_set_events(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: object) -> None:
            # The handler runs on the main thread, which may hold an event's lock right now:
            # the event is set from a thread of its own.
            self._signals += 1
            threading.Thread(target=self._signalled, args=(signum, self._signals),
                             daemon=True).start()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _signalled(self, signum: int, count: int) -> None:
        name = signal.Signals(signum).name
        if count == 1:
            self.health.stopping = True
            self.emit(WorkerEvent(f"{name}: claiming nothing more; {self.rows.busy()} rows in "
                                  f"hand, finished or handed back within "
                                  f"{self.options.grace:g}s"))
            self.stop.set()
        else:
            self.emit(WorkerEvent(f"{name} again: handing every row back now",
                                  level="warning"))
            self.hurry.set()
        self.wake.set()

    def _drain(self) -> None:
        """Wait up to --grace for the rows in hand (without limit after --once), then hand
        back what is left: released, and marked handed over when fal may have it."""
        self.stop.set()
        self.health.stopping = True
        limit = None if self.options.once and self._signals == 0 else self.options.grace
        ends = None if limit is None else time.monotonic() + limit
        while self.rows.busy() and not self.hurry.is_set():
            if ends is not None and time.monotonic() >= ends:
                break
            self.wake.wait(0.2 if ends is None else min(0.2, max(0.0, ends - time.monotonic())))
            self.wake.clear()
        left = self.rows.hand_back(HANDED_BACK)
        self.report.abandoned = left
        if left:
            self.report.ok = False
        self.emit(WorkerEvent("stopped" + (f": {left} rows handed back" if left else "")))

    def _close(self) -> None:
        self.closed.set()
        for server in (self._server, self._webhook_server):
            if server is not None:
                server.stop()

    # --- /metrics and /healthz ---

    def _serve(self) -> HttpServer:
        from imagen4ctl.services.httpd import HttpServer

        routes = {("GET", "/metrics"): self._scrape, ("GET", "/healthz"): self._healthz,
                  ("GET", "/livez"): self._livez}
        if self.webhooks is not None and shares_server(self.options):
            routes |= self.webhooks.routes()
        o = self.options
        server = HttpServer(routes, host=o.metrics_host, port=o.metrics_port or 0,
                            hint="Pick another --metrics-port, or check --metrics-host.")
        return server.start()

    @property
    def metrics_url(self) -> str | None:
        """Where /metrics is served (None: not asked for, or not yet listening)."""
        return self._server.url("") if self._server is not None else None

    def families(self) -> list[Family]:
        stale_before = self.rows.stale_before()
        fleet = nan_on_error(lambda: generations.in_flight(self.database,
                                                           stale_before=stale_before))
        own = self.stats.families(held=self.rows.busy(), at_fal=self.rows.at_fal(),
                                  fleet=fleet, cap=self.cap, health=self.health)
        if self.webhooks is not None:
            own.append(self.stats.deliveries(self.webhooks.answers))
        return [*(self.metrics() if self.metrics else []), *own]

    def _scrape(self, _request: Request) -> Reply:
        from imagen4ctl.services.httpd import Reply
        from imagen4ctl.services.metrics import CONTENT_TYPE

        return Reply(200, self.scrub(exposition(self.families())).encode(), CONTENT_TYPE)

    def _healthz(self, _request: Request) -> Reply:
        from imagen4ctl.services.httpd import Reply

        ok, text = self.health.verdict()
        return Reply.text(200 if ok else 503, self.scrub(text))

    def _livez(self, _request: Request) -> Reply:
        """200 while the loop turns, outages included: a restart would not bring fal back."""
        from imagen4ctl.services.httpd import Reply

        stalled = self.health.stalled()
        if stalled is None:
            return Reply.text(200, "ok\n")
        return Reply.text(503, f"stalled: the loop has not turned for {stalled:.0f}s\n")


def _outage(name: str, reason: str) -> Imagen4ctlError:
    kind: type[Imagen4ctlError] = {"storage": StorageError, "fal": FalError}.get(
        name, DatabaseError)
    return kind(f"{name}: {reason}", hint="Run again once it is back; nothing was lost.")

