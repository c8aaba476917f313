"""The worker's loop, in-process, on SQLite and PostgreSQL with the emulator: queued rows go
through the generation service, unattended ones through fix-pending's recovery, the fleet's
cap holds, outages queue rows again instead of failing them, and a stop hands rows back."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db.generations import get
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.errors import FalError, StorageError, UsageError
from imagen4ctl.services.generation import GenerationService
from imagen4ctl.services.recovery import Recovery
from imagen4ctl.services.recovery_plan import RecoveryOptions
from imagen4ctl.services.worker import HANDED_BACK, Worker, WorkerOptions, WorkerReport
from imagen4ctl.services.worker_state import WorkerEvent
from tests.factories import ago, bot_row, insert_rows
from tests.reliability._workers import migrated_schema
from tests.services.conftest import KEY, MODEL, MakeService

DEAD = f"{socket.gethostname()}:999999999:deadbeef"  # a worker of this host whose pid is gone


class Run:
    """A worker built as the CLI builds it, and what it said."""

    def __init__(self, service: GenerationService, emulator: FalEmulator, *, cap: int,
                 stuck_after: float, **options: Any) -> None:
        self.events: list[WorkerEvent] = []
        opts = WorkerOptions(**options)
        recovery = Recovery(service, default_model=MODEL, platform_url=emulator.platform_url,
                            fal_key=KEY, options=RecoveryOptions(
                                older_than=stuck_after, apply=True, concurrency=1,
                                timeout=30.0, handed_over=True,
                                claim_timeout=opts.claim_timeout))
        self.worker = Worker(recovery, options=opts, cap=cap, on_event=self.events.append)
        self._thread: threading.Thread | None = None
        self.report: WorkerReport | None = None
        self.error: BaseException | None = None

    def once(self) -> WorkerReport:
        assert self.worker.options.once
        return self.worker.run()

    def start(self) -> Run:
        def target() -> None:
            try:
                self.report = self.worker.run()
            except BaseException as e:  # noqa: BLE001 - the test looks at it
                self.error = e

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        return self

    def stop(self, within: float = 30.0) -> WorkerReport:
        assert self._thread is not None
        self.worker.stop.set()
        self.worker.wake.set()
        self._thread.join(within)
        assert not self._thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report

    def states(self) -> list[tuple[int | None, str | None, str | None]]:
        return [(e.id, e.from_status, e.to_status) for e in self.events if e.to_status]


MakeRun = Callable[..., Run]


@pytest.fixture
def make_run(make_service: MakeService, fal_emulator: FalEmulator) -> MakeRun:
    """`make_run()` for `.once()` (--once); `make_run(loop=True)` for `.start()`."""

    def make(*, cap: int = 2, stuck_after: float = 600.0, loop: bool = False,
             **options: Any) -> Run:
        options.setdefault("idle", 0.05)
        return Run(make_service(), fal_emulator, cap=cap, stuck_after=stuck_after,
                   once=not loop, **options)

    return make


def row(db_url: str, generation_id: int) -> Any:
    from imagen4ctl.db.session import Database

    database = Database(db_url)
    try:
        return get(database, generation_id)
    finally:
        database.dispose()


def wait_for(condition: Callable[[], Any], within: float = 20.0) -> Any:
    ends = time.monotonic() + within
    while not (value := condition()):
        assert time.monotonic() < ends, "not within the time given"
        time.sleep(0.05)
    return value


def submitted_request(emulator: FalEmulator, prompt: str) -> str:
    """A request at fal, as a worker that died right after submitting left it."""
    from imagen4ctl.adapters.fal import FalAdapter
    from imagen4ctl.deadline import Deadline

    return FalAdapter(KEY).submit(MODEL, {"prompt": prompt}, Deadline(10)).request_id


# --- queued rows ---


def test_a_queued_row_goes_through_the_generation_service_to_completed(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PENDING", prompt="a queued cat")])
    run = make_run()
    assert run.once().ok
    done = row(migrated_db, 1)
    assert done.status == "COMPLETED" and done.fal_request_id and done.claimed_by is None
    assert done.fal_endpoint == MODEL  # the endpoint it went to is recorded for later askers
    assert (tmp_path / "images" / done.result_urls[0]).is_file()
    assert fal_emulator.log.queued_count("a queued cat") == 1
    assert run.states() == [(1, "PENDING", "PROCESSING"), (1, "PROCESSING", "COMPLETED")]
    submitted = next(e for e in run.events if e.to_status == "PROCESSING")
    assert submitted.fal_request_id == done.fal_request_id and submitted.user_id == "42"


def test_a_row_that_was_tried_or_is_another_kind_is_not_queued(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    insert_rows(migrated_db, [
        bot_row("1", "avatar", "PENDING", prompt="an avatar"),
        bot_row("1", "imagen4", "PENDING", prompt="the bot gave up", error="quota"),
        bot_row("1", "imagen4", "PENDING", prompt="held", claimed_by=f"other:{os.getpid()}:x",
                claimed_at=ago(seconds=1)),
    ])
    assert make_run().once().ok
    assert [row(migrated_db, i).status for i in (1, 2, 3)] == ["PENDING"] * 3
    assert fal_emulator.log.submission_count() == 0


def test_a_row_that_cannot_be_sent_as_written_fails_with_the_reason(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PENDING", prompt="  ",
                                      aspect_ratio="2:1")])
    assert not make_run().once().ok  # fix-pending's exit 1: an action did not succeed
    failed = row(migrated_db, 1)
    assert failed.status == "FAILED" and failed.error.startswith("not submitted: ")
    assert failed.claimed_by is None and fal_emulator.log.submission_count() == 0


def test_the_fleet_cap_holds_with_concurrency_above_it(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 0.4
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", prompt=f"capped {n}")
                              for n in range(8)])
    assert make_run(cap=3, concurrency=8).once().ok
    peak = fal_emulator.log.peak_in_flight(prompt_contains="capped")
    assert peak.count == 3, peak  # never above the cap, and the cap was used
    assert fal_emulator.log.prompts_queued_twice("capped") == {}


class SlowStorage(LocalStorage):
    def put_stream(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return super().put_stream(*args, **kwargs)


def test_the_next_request_goes_while_the_last_ones_images_are_stored(
        make_service: MakeService, migrated_db: str, fal_emulator: FalEmulator,
        tmp_path: Path) -> None:
    service = make_service()
    service.storage = service.images.storage = SlowStorage(tmp_path / "slow")
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", prompt=f"overlap {n}")
                              for n in range(2)])
    assert Run(service, fal_emulator, cap=1, stuck_after=600.0, once=True, idle=0.05).once().ok
    first, second = sorted(fal_emulator.log.lifetimes("overlap"), key=lambda x: x.queued_at)
    stored = row(migrated_db, 1 if first.prompt == "overlap 0" else 2).completed_at
    assert first.ended_at is not None and second.queued_at >= first.ended_at  # the cap held
    assert second.queued_at < stored  # ... and freed as soon as fal answered


def test_requests_of_a_dead_worker_still_count_against_the_cap(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 30.0  # still running at fal for the whole test
    request_id = submitted_request(fal_emulator, "left by a dead worker")
    insert_rows(migrated_db, [
        bot_row("7", "imagen4", "PROCESSING", prompt="left by a dead worker",
                fal_request_id=request_id, submit_started_at=ago(seconds=1),
                claimed_by=DEAD, claimed_at=ago(seconds=1), fal_endpoint=MODEL),
        bot_row("7", "imagen4", "PENDING", prompt="waits for a place"),
    ])
    run = make_run(cap=1, loop=True).start()
    time.sleep(1.0)
    run.stop()
    assert row(migrated_db, 2).status == "PENDING"  # the one place is taken at fal
    assert fal_emulator.log.submission_count("waits for a place") == 0


# --- unattended rows: fix-pending's actions ---


def test_a_dead_workers_row_in_flight_is_followed_not_resubmitted(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    request_id = submitted_request(fal_emulator, "followed")
    insert_rows(migrated_db, [bot_row(
        "7", "imagen4", "PROCESSING", prompt="followed", fal_request_id=request_id,
        submit_started_at=ago(seconds=2), claimed_by=DEAD, claimed_at=ago(seconds=1),
        fal_endpoint=MODEL)])
    run = make_run(loop=True).start()
    wait_for(lambda: row(migrated_db, 1).status == "COMPLETED")
    run.stop()
    done = row(migrated_db, 1)
    assert done.fal_request_id == request_id and done.claimed_by is None
    assert fal_emulator.log.submission_count("followed") == 1  # the dead worker's only
    assert run.states() == [(1, "PROCESSING", "COMPLETED")]
    assert run.worker.stats.counts["recoveries"] == 1


def test_a_possible_submission_is_adopted_from_fal_never_sent_again(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    request_id = submitted_request(fal_emulator, "died before saving the id")
    time.sleep(fal_emulator.latency + 0.2)
    insert_rows(migrated_db, [bot_row(
        "7", "imagen4", "PENDING", prompt="died before saving the id",
        submit_started_at=ago(seconds=5), claimed_by=DEAD, claimed_at=ago(seconds=5),
        fal_endpoint=MODEL)])
    assert make_run(claim_timeout=2.0).once().ok
    done = row(migrated_db, 1)
    assert (done.status, done.fal_request_id) == ("COMPLETED", request_id)
    assert fal_emulator.log.submission_count("died before saving the id") == 1


def test_a_possible_submission_waits_until_it_settles(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    insert_rows(migrated_db, [bot_row(
        "7", "imagen4", "PENDING", prompt="just marked", submit_started_at=ago(seconds=1),
        claimed_by=DEAD, claimed_at=ago(seconds=1))])
    assert make_run(claim_timeout=60.0).once().ok
    untouched = row(migrated_db, 1)
    assert untouched.status == "PENDING" and untouched.error is None
    assert fal_emulator.log.submission_count() == 0


def test_a_fresh_unclaimed_row_in_flight_is_left_to_its_own_run(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    """`generate` claims nothing: a row it is following must not be taken from it."""
    request_id = submitted_request(fal_emulator, "generate follows it")
    insert_rows(migrated_db, [bot_row(
        "7", "imagen4", "PROCESSING", prompt="generate follows it", fal_request_id=request_id,
        submit_started_at=ago(seconds=1), age=timedelta(seconds=1), fal_endpoint=MODEL)])
    time.sleep(fal_emulator.latency + 0.2)
    assert make_run().once().ok
    assert row(migrated_db, 1).status == "PROCESSING"


def test_a_row_left_at_fal_by_generate_no_wait_is_collected_once_quiet(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    request_id = submitted_request(fal_emulator, "no-wait")
    insert_rows(migrated_db, [bot_row(
        "7", "imagen4", "PROCESSING", prompt="no-wait", fal_request_id=request_id,
        submit_started_at=ago(seconds=5), age=timedelta(seconds=3), fal_endpoint=MODEL)])
    time.sleep(fal_emulator.latency + 0.2)
    assert make_run(claim_timeout=2.0).once().ok
    done = row(migrated_db, 1)
    assert (done.status, done.fal_request_id) == ("COMPLETED", request_id)
    assert fal_emulator.log.submission_count("no-wait") == 1


def test_stuck_and_handed_over_rows_are_finished_as_fix_pending_would(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    handed = submitted_request(fal_emulator, "handed over")
    time.sleep(fal_emulator.latency + 0.2)
    insert_rows(migrated_db, [
        bot_row("7", "imagen4", "PROCESSING", prompt="handed over", fal_request_id=handed,
                error="storage: the bucket was down", age=timedelta(seconds=5),
                fal_endpoint=MODEL),
        bot_row("7", "imagen4", "PENDING", prompt="never sent", error="the bot gave up",
                age=timedelta(minutes=20)),
    ])
    run = make_run(stuck_after=600.0)
    assert run.once().ok
    assert row(migrated_db, 1).status == "COMPLETED"
    failed = row(migrated_db, 2)
    assert (failed.status, failed.error) == ("FAILED", "never submitted")
    assert fal_emulator.log.submission_count() == 1  # the handed-over one, sent before


# --- outages: waited out, never a FAILED row ---


@pytest.mark.parametrize("refusal", ["forbidden_keys", "locked_keys"])
def test_a_submission_fal_refuses_queues_the_row_again(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator, refusal: str) -> None:
    setattr(fal_emulator, refusal, {KEY})
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", prompt="refused")])
    run = make_run()
    with pytest.raises(FalError):  # --once: a dependency down is exit 1
        run.once()
    queued = row(migrated_db, 1)
    assert queued.status == "PENDING" and queued.claimed_by is None
    assert queued.submit_started_at is None and queued.error is None  # queued again
    assert run.worker.stats.counts["requeued"] == 1


def test_fal_down_is_waited_out_then_the_row_completes(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    fal_emulator.locked_keys = {KEY}
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", prompt="after the top-up")])
    run = make_run(max_backoff=0.5, loop=True).start()
    wait_for(lambda: run.worker.health.is_down("fal"))
    ok, text = run.worker.health.verdict()
    assert not ok and text.startswith("fal: fal account locked")
    fal_emulator.locked_keys = set()
    wait_for(lambda: row(migrated_db, 1).status == "COMPLETED")
    wait_for(lambda: run.worker.health.verdict()[0])
    run.stop()
    assert fal_emulator.log.queued_count("after the top-up") == 1


class Cuttable:
    """A TCP proxy in front of PostgreSQL: `cut()` drops every connection and refuses new
    ones, as a database that went down; `restore()` lets them through again."""

    def __init__(self, port: int = 5432) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target) if self.up else None
            except OSError:
                if self.listener.fileno() < 0:
                    return
                continue
            if server is None:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            for end in self._open:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            self._open = []

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_database_outage_is_waited_out(pg_database: str, fal_emulator: FalEmulator,
                                         tmp_path: Path) -> None:
    from imagen4ctl.adapters.fal import FalAdapter
    from imagen4ctl.db.session import Database

    direct = migrated_schema(pg_database, "dbdown")
    proxy = Cuttable()
    proxied = direct.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    assert proxied != direct
    service = GenerationService(
        Database(proxied, connect_timeout=2), LocalStorage(tmp_path / "images"), FalAdapter(KEY),
        model=MODEL, prefix="generations/", max_image_bytes=10 * 1024 * 1024,
        trusted_hosts=frozenset({fal_emulator.host}))
    fal_emulator.latency = 1.0
    insert_rows(direct, [bot_row("7", "imagen4", "PENDING", prompt=f"outage {n}")
                         for n in range(4)])
    run = Run(service, fal_emulator, cap=2, stuck_after=600.0, idle=0.05, max_backoff=1.0,
              claim_timeout=60.0).start()
    try:
        wait_for(lambda: sum(row(direct, i).status == "PROCESSING" for i in range(1, 5)) == 2)
        proxy.cut()
        wait_for(lambda: run.worker.health.is_down("database"))
        assert run.worker.health.verdict()[1].startswith("database: ")
        time.sleep(2.0)
        proxy.restore()
        # The rows in hand when it went down were handed over: taken again at once, not
        # after --claim-timeout or STUCK_AFTER.
        wait_for(lambda: all(row(direct, i).status == "COMPLETED" for i in range(1, 5)), 20)
        wait_for(lambda: run.worker.health.verdict()[0])
        run.stop()
    finally:
        proxy.close()
        service.database.dispose()
    assert fal_emulator.log.prompts_queued_twice("outage") == {}
    assert all(row(direct, i).claimed_by is None for i in range(1, 5))


def test_storage_down_claims_nothing(make_service: MakeService, fal_emulator: FalEmulator,
                                     migrated_db: str, tmp_path: Path) -> None:
    service = make_service()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    service.storage = LocalStorage(blocker / "images")
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", prompt="no bucket")])
    run = Run(service, fal_emulator, cap=2, stuck_after=600.0, once=True)
    with pytest.raises(StorageError):
        run.once()
    assert row(migrated_db, 1).claimed_by is None and fal_emulator.log.submission_count() == 0


# --- the loop: /healthz, /metrics, a stop ---


def test_healthz_and_metrics_answer_while_it_runs(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    run = make_run(metrics_port=0, loop=True).start()
    url = wait_for(lambda: run.worker.metrics_url)
    wait_for(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200)
    assert httpx.get(f"{url}/healthz", timeout=5).text == "ok\n"
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", prompt="scraped")])
    wait_for(lambda: row(migrated_db, 1).status == "COMPLETED")
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {sample.name: sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples if not sample.labels}
    assert values["imagen4ctl_worker_submissions_total"] == 1
    assert values["imagen4ctl_worker_completions_total"] == 1
    assert values["imagen4ctl_worker_fleet_max_concurrent"] == 2
    assert values["imagen4ctl_worker_last_pass_timestamp_seconds"] > time.time() - 60
    assert values["imagen4ctl_worker_healthy"] == 1
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
    assert httpx.get(f"{url}/nope", timeout=5).status_code == 404
    assert httpx.post(f"{url}/healthz", timeout=5).status_code == 405
    run.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_a_stop_hands_back_what_grace_did_not_finish(
        make_run: MakeRun, migrated_db: str, fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 4.0
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", prompt="slow one"),
                              bot_row("7", "imagen4", "PENDING", prompt="no place for it")])
    run = make_run(cap=1, grace=0.3, loop=True).start()
    wait_for(lambda: row(migrated_db, 1).status == "PROCESSING")
    started = time.monotonic()
    report = run.stop()
    assert time.monotonic() - started < 3.0 and report.abandoned == 1
    handed = row(migrated_db, 1)
    assert (handed.status, handed.claimed_by, handed.error) == ("PROCESSING", None, HANDED_BACK)
    waiting = row(migrated_db, 2)  # claimed by nobody, still queued for the next worker
    assert (waiting.status, waiting.claimed_by, waiting.submit_started_at) == (
        "PENDING", None, None)
    # The next worker takes it at once (its thread, abandoned, may finish it too): no
    # second submission either way.
    second = make_run(loop=True).start()
    wait_for(lambda: row(migrated_db, 1).status == "COMPLETED")
    second.stop()
    assert fal_emulator.log.submission_count("slow one") == 1


def test_options_refuse_what_cannot_work() -> None:
    for bad in ({"concurrency": 0}, {"grace": -1}, {"claim_timeout": 0}):
        with pytest.raises(UsageError):
            WorkerOptions(**bad)  # type: ignore[arg-type]
