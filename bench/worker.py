"""Issue 19 — the worker: 1, 2 and 4 `imagen4ctl worker` processes drain queued rows, in one run.

    python bench/worker.py [--rows 1000] [--latency 0.5] [--cap 8] [--workers 1,2,4]
                           [--rounds 1] [--storage local|s3] [--follow stream,webhook]

The fal emulator runs in this process (HTTPS, fixed latency L per request); PostgreSQL is a
scratch database on the tests' server. Each run inserts `--rows` PENDING rows as the bot does
(kind imagen4, the three Imagen 4 endpoints in turn), starts W worker processes with
FAL_MAX_CONCURRENT = C, waits until every row is COMPLETED or FAILED, then stops them with
SIGTERM. Runs are interleaved in a shuffled order per round. `--follow` names how the workers
learn that a request ended: `stream` (fal's status stream, the default), `webhook` (each worker
with `--webhook-port` and `--webhook-url` of its own, the emulator posting each request's
end to it; no status call is made while the delivery is awaited); with both, every worker
count runs in both modes, side by side.

Each worker gets `--concurrency ceil(C / W) + 1` (C for one worker): together they could
send more than C, so the fleet's cap is what holds them, and none can keep every place to
itself (a worker with `--concurrency` >= C refills its places the moment they free up and
leaves the others idle, which would measure one worker W times). `--concurrency N` gives
every worker N instead.

Measured per run:

- throughput: rows / (last `completed_at` - first submission the emulator queued), against
  the ideal C / L (fal never busier than the cap allows, no time lost between requests);
  target >= 0.9 x C / L for every W. The wall time from the workers' start is shown too.
- per worker: CPU seconds (user + system) and peak RSS, from `wait4()`'s rusage of that
  process alone, start-up and shutdown included.
- database work per generation, read from PostgreSQL's own log: the bench's database gets
  `log_statement = 'all'` (its own connection turns it off), and every line `statement:`
  the server logged for that database is counted, by the backend that sent it: statements
  (BEGIN, COMMIT and ROLLBACK apart) and transactions (an explicit BEGIN..COMMIT/ROLLBACK is
  one, a statement outside one is one). Without a readable server log (`--pg-log`) or the
  right to set log_statement, it falls back to pg_stat_database's xact_commit + xact_rollback
  delta, which also counts the bench's own polls (said so in the report).

Checks that stop the benchmark: a row not COMPLETED, a prompt queued at fal twice, more than
C requests at fal at once (the emulator's log: queued or running, `RequestLog.peak_in_flight`),
a worker that does not exit 0 after SIGTERM.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import DEFAULT_DSN, Pg, free_port, pg_connect, scratch_database, start_bucket
from _perf import KEY, BenchError, bench_env, fal_emulator, machine, run_measured, verdict

from imagen4ctl.endpoints import ENDPOINTS

TARGET = 0.9
DRAIN_TIMEOUT_FACTOR = 4.0  # a run is abandoned after this many times its ideal duration (+60 s)
STATEMENT = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] \S*@(\S+) LOG:  statement: (.*)$")
TRANSACTION_CONTROL = ("BEGIN", "START TRANSACTION", "COMMIT", "END", "ROLLBACK")


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "imagen4ctl"), *args]


def worker_command(concurrency: int, follow: str) -> list[str]:
    command = cli("worker", "--concurrency", str(concurrency))
    if follow == "webhook":
        port = str(free_port())
        command += ["--webhook-port", port, "--webhook-url",
                    f"http://127.0.0.1:{port}/fal/webhook"]
    return command


def concurrency_of(workers: int, args: argparse.Namespace) -> int:
    if args.concurrency:
        return int(args.concurrency)
    return args.cap if workers == 1 else min(args.cap, math.ceil(args.cap / workers) + 1)


# -- the database ------------------------------------------------------------------------------


def fill(pg: Pg, rows: int, run: int) -> None:
    """`rows` PENDING rows as the bot writes them, in one statement (no row crosses the wire)."""
    endpoints = sorted(ENDPOINTS)
    cases = " ".join(f"WHEN {n} THEN '{endpoint}'" for n, endpoint in enumerate(endpoints))
    pg.execute("TRUNCATE generations RESTART IDENTITY")
    pg.execute(
        "INSERT INTO generations (user_id, kind, status, prompt, aspect_ratio, fal_endpoint, "
        "created_at, updated_at) "
        f"SELECT 'u' || (i %% 50), 'imagen4', 'PENDING', 'bench worker run {run} row ' || i, "
        f"'1:1', CASE i %% {len(endpoints)} {cases} END, now(), now() "
        "FROM generate_series(1, %s) AS i", (rows,))


def finished(pg: Pg) -> int:
    [(count,)] = pg.execute(
        "SELECT count(*) FROM generations WHERE status IN ('COMPLETED', 'FAILED')")
    return int(count)


@dataclass
class PgLog:
    """The server's log from an offset on; None when it cannot be read."""

    path: Path | None
    database: str
    offset: int = 0

    def mark(self) -> None:
        if self.path is not None:
            self.offset = self.path.stat().st_size

    def statements(self, exclude_pids: set[int]) -> Iterator[tuple[int, str]]:
        assert self.path is not None
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            for raw in log:
                match = STATEMENT.match(raw.decode(errors="replace").rstrip("\n"))
                if match and match.group(2) == self.database \
                        and int(match.group(1)) not in exclude_pids:
                    yield int(match.group(1)), match.group(3)


LITERALS = [(re.compile(r"'(?:[^']|'')*'"), "'…'"), (re.compile(r"\b\d+(\.\d+)?\b"), "N"),
            (re.compile(r"\((?:'…'|N)(?:, (?:'…'|N))*\)"), "(…)")]


def shape(text: str) -> str:
    """A statement without its values, so that the same statement counts as one."""
    for pattern, replacement in LITERALS:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())[:150]


def count_statements(log: PgLog, exclude_pids: set[int],
                     shapes: Counter[str] | None = None) -> tuple[int, int]:
    """(statements, transactions) the server logged for the bench's database since the mark;
    each statement's shape is counted into `shapes`."""
    statements = transactions = 0
    open_transaction: dict[int, bool] = {}
    for pid, text in log.statements(exclude_pids):
        word = text.strip().rstrip(";").upper()
        if word in ("BEGIN", "START TRANSACTION") or word.startswith("BEGIN "):
            open_transaction[pid] = True
        elif word in ("COMMIT", "END", "ROLLBACK"):
            if open_transaction.pop(pid, False):
                transactions += 1
        else:
            statements += 1
            if shapes is not None:
                shapes[shape(text)] += 1
            if not open_transaction.get(pid, False):
                transactions += 1  # autocommit: a transaction of its own
    return statements, transactions


def xacts(pg: Pg, database: str) -> int:
    [(count,)] = pg.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                            "WHERE datname = %s", (database,))
    return int(count)


def find_pg_log(option: str | None) -> Path | None:
    if option:
        return Path(option)
    found = sorted(glob.glob("/var/log/postgresql/postgresql-*-main.log"),
                   key=lambda p: Path(p).stat().st_mtime)
    return Path(found[-1]) if found else None


# -- one run -----------------------------------------------------------------------------------


@dataclass
class WorkerUsage:
    cpu_seconds: float
    peak_rss_mb: float
    exit_code: int


@dataclass
class RunResult:
    workers: int
    follow: str
    throughput: float  # generations per second, first submission to last completion
    seconds: float  # the same window
    wall: float  # from the workers' start until every row was finished
    usage: list[WorkerUsage] = field(default_factory=list)
    statements: int | None = None
    shapes: Counter[str] = field(default_factory=Counter)
    transactions: int = 0
    peak_in_flight: int = 0


def stop(process: subprocess.Popen[bytes], grace: float) -> WorkerUsage:
    """SIGTERM, then the process's own rusage; SIGKILL (and a failed run) after `grace`."""
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.02)
    process.returncode = os.waitstatus_to_exitcode(status)
    return WorkerUsage(usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                       process.returncode)


def one_run(number: int, workers: int, follow: str, args: argparse.Namespace,
            env: dict[str, str], emulator: Any, pg: Pg, log: PgLog, folder: Path) -> RunResult:
    emulator.reset()
    fill(pg, args.rows, number)
    images = folder / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    log.mark()
    xacts_before = xacts(pg, log.database)
    own_queries = 1
    ideal_seconds = args.rows * args.latency / args.cap
    started = time.monotonic()
    processes = []
    for n in range(workers):
        out = open(folder / f"worker-{number}-{n}.log", "wb")
        processes.append(subprocess.Popen(worker_command(concurrency_of(workers, args), follow),
                                          env=env, cwd=folder / "work", stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        out.close()
    try:
        deadline = started + ideal_seconds * DRAIN_TIMEOUT_FACTOR + 60
        while (done := finished(pg)) < args.rows:
            own_queries += 1
            for process in processes:
                if process.poll() is not None:
                    raise BenchError(f"a worker exited {process.returncode} during run {number}; "
                                     f"log in {folder}/worker-{number}-*.log")
            if time.monotonic() > deadline:
                raise BenchError(f"run {number}: {done} of {args.rows} rows finished after "
                                 f"{time.monotonic() - started:.0f} s")
            time.sleep(0.2)
        wall = time.monotonic() - started
    finally:
        usage = [stop(process, args.grace) for process in processes]
    bad = [u.exit_code for u in usage if u.exit_code != 0]
    if bad:
        raise BenchError(f"run {number}: worker exit codes after SIGTERM {bad}, expected 0")

    statuses = dict(pg.execute("SELECT status, count(*) FROM generations GROUP BY status"))
    if statuses != {"COMPLETED": args.rows}:
        raise BenchError(f"run {number}: rows by status {statuses}")
    twice = emulator.log.prompts_queued_twice()
    if twice:
        raise BenchError(f"run {number}: prompts queued at fal more than once: "
                         f"{sorted(twice.items())[:5]}")
    peak = emulator.log.peak_in_flight()
    if peak.count > args.cap:
        raise BenchError(f"run {number}: {peak.count} requests at fal at {peak.at}, cap "
                         f"{args.cap}: {peak.request_ids}")
    lifetimes = emulator.log.lifetimes()
    if len(lifetimes) != args.rows:
        raise BenchError(f"run {number}: fal queued {len(lifetimes)} requests for {args.rows} rows")
    first = min(life.queued_at for life in lifetimes)
    [(last,)] = pg.execute("SELECT max(completed_at) FROM generations")
    seconds = (last - first).total_seconds()
    result = RunResult(workers, follow, args.rows / seconds, seconds, wall, usage,
                       peak_in_flight=peak.count)
    own_queries += 4
    if log.path is not None:
        [(own_pid,)] = pg.execute("SELECT pg_backend_pid()")
        result.statements, result.transactions = count_statements(log, {own_pid},
                                                                  result.shapes)
    else:
        time.sleep(1.2)  # PostgreSQL flushes a backend's statistics at most once a second
        result.transactions = xacts(pg, log.database) - xacts_before - own_queries
    return result


# -- the report --------------------------------------------------------------------------------


def report(results: dict[tuple[int, str], list[RunResult]], args: argparse.Namespace,
           log: PgLog) -> None:
    ideal = args.cap / args.latency
    print(f"\nIssue 19, the worker — {machine()}")
    print(f"{args.rows} rows, emulator latency L = {args.latency:g} s (queue fraction "
          f"{args.queue_fraction:g}), cap C = FAL_MAX_CONCURRENT = {args.cap}, PostgreSQL, "
          f"storage {args.storage}; ideal C / L = {ideal:.2f} generations/s\n")
    print(f"{'workers':>7} {'follow':>7} {'--conc.':>7} {'gen/s':>7} {'x ideal':>8} {'target':>7} "
          f"{'window s':>9} {'wall s':>7} {'CPU s/worker':>13} {'peak RSS MB':>12} "
          f"{'stmts/gen':>10} {'xacts/gen':>10} {'peak at fal':>12} {'n':>3}")
    for (workers, follow), runs in results.items():
        if not runs:
            continue
        rate = statistics.median(r.throughput for r in runs)
        cpu = [u.cpu_seconds for r in runs for u in r.usage]
        rss = [u.peak_rss_mb for r in runs for u in r.usage]
        per_gen = args.rows
        stmts = [r.statements / per_gen for r in runs if r.statements is not None]
        tx = statistics.median(r.transactions / per_gen for r in runs)
        print(f"{workers:>7} {follow:>7} {concurrency_of(workers, args):>7} {rate:>7.2f} "
              f"{rate / ideal:>7.3f}x "
              f"{verdict(rate >= TARGET * ideal):>7} "
              f"{statistics.median(r.seconds for r in runs):>9.2f} "
              f"{statistics.median(r.wall for r in runs):>7.2f} "
              f"{statistics.median(cpu):>6.2f} (max {max(cpu):.2f}) "
              f"{statistics.median(rss):>5.1f} (max {max(rss):.1f}) "
              f"{(f'{statistics.median(stmts):.1f}' if stmts else '-'):>10} {tx:>10.1f} "
              f"{max(r.peak_in_flight for r in runs):>12} {len(runs):>3}")
    print(f"\ntarget: >= {TARGET} x C / L = {TARGET * ideal:.2f} generations/s for every "
          "worker count; gen/s and the window run from the first request fal queued to the "
          "last row's completed_at; wall from the workers' start to the last row finished")
    if log.path is not None:
        print(f"stmts/gen and xacts/gen: every statement the server logged for the bench's "
              f"database ({log.path}, log_statement = all), the bench's own connection left "
              "out; BEGIN/COMMIT/ROLLBACK are not statements, a BEGIN..COMMIT or an "
              "autocommit statement is one transaction")
    else:
        print("xacts/gen: pg_stat_database xact_commit + xact_rollback, less the bench's own "
              "queries (no readable server log: statements not counted)")
    print("CPU s and peak RSS: per worker process (wait4 rusage, start-up and shutdown "
          "included), median and max over the runs' workers")
    if args.by_statement and log.path is not None:
        for (workers, follow), runs in results.items():
            shapes: Counter[str] = Counter()
            for run in runs:
                shapes.update(run.shapes)
            print(f"\nW={workers}, {follow}: statements per generation, by statement")
            for text, count in shapes.most_common(12):
                print(f"  {count / (args.rows * len(runs)):6.2f}  {text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.5, help="L, seconds per request")
    parser.add_argument("--queue-fraction", type=float, default=0.3)
    parser.add_argument("--cap", type=int, default=8, help="C, FAL_MAX_CONCURRENT")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="--concurrency of every worker (default: ceil(C / W) + 1, at "
                        "most C)")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds a worker has to exit after SIGTERM")
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--follow", default="stream",
                        help="how workers learn a request ended: stream, webhook or both "
                        "(stream,webhook), side by side")
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--by-statement", action="store_true",
                        help="also list the statements sent per generation, most frequent first")
    parser.add_argument("--pg-log", default=None,
                        help="PostgreSQL's log file (default: /var/log/postgresql's newest)")
    args = parser.parse_args()
    levels = [int(n) for n in args.workers.split(",")]
    follows = [mode.strip() for mode in args.follow.split(",") if mode.strip()]
    if not follows or set(follows) - {"stream", "webhook"}:
        parser.error(f"--follow takes stream and/or webhook, not {args.follow!r}")

    name = f"imagen4ctl_bench_worker_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="imagen4ctl-worker-bench-") as tmp, \
            scratch_database(args.dsn, name) as url, \
            fal_emulator(args.latency, args.queue_fraction) as emulator:
        folder = Path(tmp)
        (folder / "work").mkdir()
        env = bench_env(**emulator.env(), FAL_KEY=KEY, HOME=str(folder / "work"),
                        DATABASE_URL=url, IMAGES_DIR=str(folder / "images"),
                        FAL_MAX_CONCURRENT=str(args.cap),
                        FAL_WEBHOOK_JWKS_URL=emulator.jwks_url)
        server = start_bucket(folder, env) if args.storage == "s3" else None
        try:
            run_measured(cli("db", "upgrade"), env=env, cwd=folder / "work")
            log = PgLog(find_pg_log(args.pg_log), name)
            with pg_connect(url) as pg:
                if log.path is not None:
                    try:
                        log.path.stat()
                        with open(log.path, "rb"):
                            pass
                        pg.execute("SET log_statement = 'none'")  # this connection only
                        pg.execute(f'ALTER DATABASE "{name}" SET log_statement = \'all\'')
                    except Exception as e:  # noqa: BLE001 - fall back, and say so
                        print(f"statements not counted ({type(e).__name__}: {e})")
                        log.path = None
                results: dict[tuple[int, str], list[RunResult]] = {
                    (n, follow): [] for n in levels for follow in follows}
                plan = []
                for _ in range(args.rounds):
                    this = list(results)
                    random.shuffle(this)
                    plan += this
                for number, (workers, follow) in enumerate(plan):
                    result = one_run(number, workers, follow, args, env, emulator, pg, log,
                                     folder)
                    results[workers, follow].append(result)
                    print(f"  W={workers} {follow}: {result.throughput:6.2f} gen/s over "
                          f"{result.seconds:6.2f} s (wall {result.wall:6.2f} s), CPU "
                          + ", ".join(f"{u.cpu_seconds:.1f}" for u in result.usage)
                          + " s, peak RSS " + ", ".join(f"{u.peak_rss_mb:.0f}"
                                                        for u in result.usage)
                          + f" MB, peak at fal {result.peak_in_flight}", flush=True)
        finally:
            if server is not None:
                server.stop()
    report(results, args, log)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
