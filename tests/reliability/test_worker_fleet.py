"""Three `imagen4ctl worker` processes on one PostgreSQL drain 300 queued rows of the three
Imagen 4 endpoints (preview, fast, ultra; kind `imagen4`, the kind a worker serves) while one
is killed (SIGKILL) and one stopped (SIGTERM): every row ends COMPLETED or FAILED with a
reason, fal queues no row twice, and the fleet never has more than FAL_MAX_CONCURRENT
requests at fal at once (the emulator's log: queued or running)."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl.emulator.log import InFlightPeak, Lifetime
from imagen4ctl.endpoints import ENDPOINTS
from tests.reliability._workers import (
    KEY,
    Worker,
    finished,
    migrated_schema,
    outputs,
    queue_rows,
    spawn,
    sql,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.slow

ROWS = 300
CAP = 6  # FAL_MAX_CONCURRENT: below what the workers would take together (3 + 4 + 4)
FIRST, SHARE = 3, 4  # --concurrency of the first worker, and of the two started after it
LATENCY = 0.25
SLOW = 4.0  # fal's latency while the second worker is stopped: it cannot wait that long
GRACE = 10
STOP_GRACE = 1
# A row the killed worker may have sent (marked, no request id yet) is looked up at fal once
# its mark is this old; the default, 60 s, would only make the test wait.
CLAIM_TIMEOUT = "5"


@pytest.fixture
def fleet_env(pg_database: str, s3_env: dict[str, str], fal_emulator: Any) -> dict[str, str]:
    scoped = migrated_schema(pg_database, "fleet")
    fal_emulator.latency = LATENCY
    return {**s3_env, "DATABASE_URL": scoped, "FAL_KEY": KEY,
            "FAL_MAX_CONCURRENT": str(CAP), "COLUMNS": "200"}


def held_by(db: str, pid: int) -> set[int]:
    """Ids of the unfinished rows whose claim names this process."""
    rows = sql(db, "SELECT id, claimed_by FROM generations WHERE status NOT IN "
                   "('COMPLETED', 'FAILED') AND claimed_by IS NOT NULL")
    return {row_id for row_id, owner in rows if owner and f":{pid}:" in f":{owner}:"}


def slow_requests_held(db: str, pid: int, fal_emulator: Any, after: datetime) -> set[int]:
    """Rows held by this process whose request fal will not finish before `after`."""
    ending = {life.request_id: life.ended_at for life in fal_emulator.log.lifetimes()}
    rows = sql(db, "SELECT id, fal_request_id FROM generations WHERE fal_request_id IS NOT "
                   "NULL AND status NOT IN ('COMPLETED', 'FAILED')")
    held = held_by(db, pid)
    return {row_id for row_id, request_id in rows if row_id in held
            and (ending.get(request_id) or after) >= after}


def clock(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%H:%M:%S.%f}"


def describe(peak: InFlightPeak, lifetimes: list[Lifetime], db: str,
             workers: list[Worker]) -> str:
    """What was at fal at the peak, as fal and as the table saw it, for a failure message."""
    rows = {request_id: (row_id, status, marked, submitted, answered) for
            row_id, request_id, status, marked, submitted, answered in sql(
                db, "SELECT id, fal_request_id, status, submit_started_at, submitted_at, "
                    "completed_at FROM generations WHERE fal_request_id IS NOT NULL")}
    lines = [f"{peak.count} requests at fal at {clock(peak.at)} (cap {CAP}):"]
    for life in lifetimes:
        if life.request_id in peak.request_ids:
            row_id, status, marked, submitted, answered = rows.get(
                life.request_id, (None, None, None, None, None))
            lines.append(f"  row {row_id} {status} request {life.request_id}: fal queued "
                         f"{clock(life.queued_at)}, ended {clock(life.ended_at)}; table: "
                         f"marked {clock(marked)}, submitted {clock(submitted)}, answered "
                         f"{clock(answered)}")
    return "\n".join(lines) + "\n" + outputs(workers)


def test_three_workers_drain_300_rows_through_a_kill_and_a_sigterm(
        fleet_env: dict[str, str], fal_emulator: Any, s3_bucket: Any, tmp_path: Path) -> None:
    db = fleet_env["DATABASE_URL"]
    prompts = queue_rows(db, ROWS, "fleet")
    # The first worker starts alone, so that it holds rows when it is killed. A worker that
    # could fill the cap alone would leave the others without rows while it refills its
    # places; so no one can: once it is gone, each of the other two holds two at least.
    killed = spawn(fleet_env, tmp_path, "killed", "--concurrency", str(FIRST),
                   "--grace", str(GRACE), "--claim-timeout", CLAIM_TIMEOUT)
    workers = [killed]
    try:
        wait_until(lambda: finished(db) >= ROWS // 10, 60, "the first rows done", workers)
        stopped = spawn(fleet_env, tmp_path, "stopped", "--concurrency", str(SHARE),
                        "--grace", str(STOP_GRACE), "--claim-timeout", CLAIM_TIMEOUT)
        survivor = spawn(fleet_env, tmp_path, "survivor", "--concurrency", str(SHARE),
                         "--grace", str(GRACE), "--claim-timeout", CLAIM_TIMEOUT)
        workers += [stopped, survivor]

        # SIGKILL mid-run, while all three work and it holds rows.
        wait_until(lambda: all("started" in w.log_path.read_text() for w in workers), 30,
                   "all three started", workers)
        wait_until(lambda: held_by(db, stopped.pid) or held_by(db, survivor.pid), 30,
                   "the others at work", workers)
        held_when_killed = wait_until(lambda: held_by(db, killed.pid), 30,
                                      "rows held by the worker to kill", workers)
        killed.stop(signal.SIGKILL, within=10)

        # SIGTERM mid-run, while it holds a request fal is still working on well past the
        # grace period: it exits 0 within the grace period and hands that row back.
        wait_until(lambda: finished(db) >= ROWS // 2, 60, "half done", workers)
        fal_emulator.latency = SLOW
        wait_until(lambda: slow_requests_held(db, stopped.pid, fal_emulator, datetime.now(UTC)
                                              + timedelta(seconds=STOP_GRACE + 1)),
                   30, "a slow request held by the worker to stop", workers)
        held_when_stopped = held_by(db, stopped.pid)
        took = stopped.stop(signal.SIGTERM, within=STOP_GRACE + 10)
        handed_back = held_when_stopped & {row_id for (row_id,) in sql(
            db, "SELECT id FROM generations WHERE status NOT IN ('COMPLETED', 'FAILED')")}
        fal_emulator.latency = LATENCY
        assert stopped.process.returncode == 0, outputs(workers)
        assert took <= STOP_GRACE + 3, f"{took:.1f}s after SIGTERM, grace {STOP_GRACE}s"

        wait_until(lambda: finished(db) == ROWS, 120, "every row finished", workers)
        survivor.stop(signal.SIGTERM, within=GRACE + 10)
        assert survivor.process.returncode == 0, outputs(workers)
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(timeout=10)
    by_status = statuses(db)
    assert set(by_status) <= {"COMPLETED", "FAILED"} and sum(by_status.values()) == ROWS, \
        (by_status, outputs(workers))
    unexplained = sql(db, "SELECT id FROM generations WHERE status = 'FAILED' AND "
                          "(error IS NULL OR error = '')")
    assert unexplained == [], outputs(workers)
    assert sql(db, "SELECT count(*) FROM generations WHERE claimed_by IS NOT NULL") == [(0,)]

    # The killed worker's rows were finished by the others, the rows the stopped one handed
    # back by the one left.
    assert held_when_killed and handed_back
    survivor_log = survivor.log_path.read_text()
    for row_id in handed_back:
        assert f"row {row_id} " in survivor_log, (row_id, outputs(workers))

    # fal's side, from the emulator's log: no row twice, never more than the cap.
    log = fal_emulator.log
    assert log.prompts_queued_twice(prompt_contains="fleet row") == {}
    queued = log.queued_per_prompt(prompt_contains="fleet row")
    completed = {prompt for (prompt,) in sql(
        db, "SELECT prompt FROM generations WHERE status = 'COMPLETED'")}
    assert all(queued[prompt] == 1 for prompt in completed)
    assert set(queued) <= set(prompts)
    assert {life.endpoint_id for life in log.lifetimes("fleet row")} == set(ENDPOINTS)
    peak = log.peak_in_flight(prompt_contains="fleet row")
    assert peak.count <= CAP, describe(peak, log.lifetimes("fleet row"), db, workers)
    assert peak.count == CAP  # the cap was used, not just respected
    # Each COMPLETED row names the one request fal queued for its prompt.
    by_prompt = {life.prompt: life.request_id for life in log.lifetimes("fleet row")}
    mismatched = [(prompt, request_id) for prompt, request_id in sql(
        db, "SELECT prompt, fal_request_id FROM generations WHERE status = 'COMPLETED'")
        if by_prompt.get(prompt) != request_id]
    assert mismatched == []
