"""Benchmark `imagen4ctl user-images` on PostgreSQL at scale, as ratios measured in one run.

    python bench/stats.py [--rows 1000000] [--users 10000] [--stuck 10000] [--repeat 5]

The machine is shared and noisy: every measurement is repeated, the measurements are
interleaved round by round, and only medians measured side by side are compared. The timings
are reported, never asserted; what does fail the run is three ways of counting disagreeing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from _common import (
    DEFAULT_DSN,
    SAMPLES_HEADER,
    BenchError,
    Pg,
    Samples,
    clean_env,
    ms,
    pg_connect,
    run_timed,
    scratch_database,
)

if TYPE_CHECKING:
    from imagen4ctl.db.session import Database

STUCK_AFTER = 600.0  # STUCK_AFTER's default (10m), which the CLI runs with here
IN_PROCESS_CALLS = 10
NO_SUCH_USER = "0"  # the fill's user ids start at 100000000
TARGET_FLEET_VS_PSQL = 2.0
TARGET_USER_SECONDS = 0.050
TARGET_ORM_SPEEDUP = 50.0

# Rows drawn by PostgreSQL itself: one INSERT … SELECT, no data crosses the wire.
FILL_SQL = """
WITH drawn AS (
    SELECT i,
           -- independent draws per row that are the same in every run
           (hashint8extended(i, 1) & 1073741823) / 1073741824.0 AS r_user,
           mod(hashint8extended(i, 2) & 1073741823, 100) AS r_kind,
           mod(hashint8extended(i, 3) & 1073741823, 100) AS r_status,
           mod(hashint8extended(i, 4) & 1073741823, 1000) AS r_misc,
           -- one user who stopped months ago: a tenth of the oldest 5%% of the rows
           mod(hashint8extended(i, 5) & 1073741823, 10) = 0
               AND i <= %(rows)s::bigint / 20 AS dormant,
           -- exactly %(stuck)s rows, spread evenly over the ids
           (i * %(stuck)s::bigint) / %(rows)s::bigint
               <> ((i - 1) * %(stuck)s::bigint) / %(rows)s::bigint AS stuck,
           -- 180 days of history ending 2 hours ago, so every stuck row is hours to days old
           now() - interval '2 hours'
               - (%(rows)s::bigint - i) * (interval '180 days' / %(rows)s::bigint) AS created_at
    FROM generate_series(1::bigint, %(rows)s::bigint) AS i
), shaped AS (
    SELECT i, r_misc, created_at,
           -- a few heavy users and a long tail: user k gets a share of about 1/sqrt(k)
           (100000000 + CASE WHEN dormant THEN %(users)s::bigint - 1
                             ELSE floor((%(users)s::bigint - 1) * r_user * r_user) END
           )::bigint::text AS user_id,
           CASE WHEN r_kind < 55 THEN 'imagen4' WHEN r_kind < 90 THEN 'avatar'
                WHEN r_kind < 95 THEN 'upscale' WHEN r_kind < 98 THEN 'sticker'
                ELSE 'imagen3-legacy' END AS kind,
           CASE WHEN stuck AND r_status < 70 THEN 'PENDING'
                WHEN stuck THEN 'PROCESSING'
                WHEN r_status < 92 THEN 'COMPLETED' ELSE 'FAILED' END AS status,
           (ARRAY['1:1', '3:4', '4:3', '9:16', '16:9'])[1 + mod(r_misc, 5)] AS aspect_ratio
    FROM drawn
), timed AS (
    SELECT *, created_at + make_interval(secs => CASE WHEN status = 'COMPLETED'
                                                      THEN 5 + mod(r_misc, 40)
                                                      ELSE 1 + mod(r_misc, 5) END) AS updated_at,
           -- about half the rows were written by imagen4ctl, the rest by the bot (NULLs)
           r_misc < 500 AS ours
    FROM shaped
)
INSERT INTO generations (id, user_id, kind, status, prompt, aspect_ratio, fal_request_id,
                         result_urls, error, created_at, updated_at, fal_endpoint, params,
                         submitted_at, completed_at)
SELECT i, user_id, kind, status,
       (ARRAY['A cat playing with a ball', 'Portrait of a woman in warm evening light',
              'A lighthouse on a cliff during a storm, oil painting',
              'Minimalist logo of a fox, flat vector', 'A bowl of ramen, studio photo',
              'Cyberpunk street at night with neon signs and rain',
              'Watercolor map of an imaginary island', 'A corgi astronaut floating in space'
       ])[1 + mod(r_misc, 8)] || ', take ' || i,
       aspect_ratio,
       CASE WHEN status <> 'PENDING' THEN md5(i::text)::uuid::text END,
       CASE WHEN status = 'COMPLETED'
            THEN jsonb_build_array('generations/' || user_id || '/' || i || '/0.png') END,
       CASE WHEN status = 'FAILED' THEN 'fal rejected the request (422): content policy' END,
       created_at, updated_at,
       CASE WHEN ours AND status <> 'PENDING' THEN 'fal-ai/imagen4/preview' END,
       CASE WHEN ours THEN jsonb_build_object('aspect_ratio', aspect_ratio, 'num_images', 1) END,
       CASE WHEN ours AND status <> 'PENDING' THEN created_at + interval '1 second' END,
       CASE WHEN ours AND status = 'COMPLETED' THEN updated_at END
FROM timed
"""

# What each statement of user_report is: the name of its `generations.Statements` property.
ROLES: dict[str, tuple[str, str]] = {
    "counts": ("by_kind", "counts by kind x status"),
    "users": ("users", "distinct users"),
    "stuck_by_kind": ("stuck_by_kind", "stuck count + oldest, by kind"),
    "stuck": ("stuck_list", "stuck list, oldest first (LIMIT 20)"),
    "top_stuck_users": ("top_stuck_users", "top stuck users (LIMIT 5)"),
    "recent": ("recent", "most recent COMPLETED (LIMIT 5)"),
}


@dataclass(frozen=True)
class Statement:
    role: str
    label: str
    sql: str


@dataclass(frozen=True)
class Summary:
    """What `user-images --json`, psql and the ORM baseline must agree on."""

    total: int
    users: int
    by_kind: dict[str, dict[str, int]]
    stuck_count: int
    stuck_ids: list[int]
    top_stuck_users: list[tuple[str, int]]
    recent_ids: list[int]

    @classmethod
    def from_cli(cls, stdout: str) -> Summary:
        data = json.loads(stdout)
        return cls(
            total=data["total"], users=data["users"],
            by_kind={k: dict(v["by_status"]) for k, v in data["by_kind"].items()},
            stuck_count=data["stuck_count"], stuck_ids=[s["id"] for s in data["stuck"]],
            top_stuck_users=[(u["user_id"], u["stuck"]) for u in data["top_stuck_users"]],
            recent_ids=[r["id"] for r in data["recent"]],
        )

    @classmethod
    def from_psql(cls, stdout: str, statements: list[Statement]) -> Summary:
        rows = _psql_sections(stdout, statements)
        by_kind: dict[str, dict[str, int]] = {}
        for kind, status, count in rows["by_kind"]:
            by_kind.setdefault(kind, {})[status] = int(count)
        total = sum(sum(c.values()) for c in by_kind.values())
        users = int(rows["users"][0][0]) if "users" in rows else int(total > 0)
        return cls(
            total=total, users=users, by_kind=by_kind,
            stuck_count=sum(int(r[1]) for r in rows["stuck_by_kind"]),
            stuck_ids=[int(r[0]) for r in rows.get("stuck_list", [])],
            top_stuck_users=[(r[0], int(r[1])) for r in rows.get("top_stuck_users", [])],
            recent_ids=[int(r[0]) for r in rows.get("recent", [])],
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, stdout: str) -> Summary:
        data = json.loads(stdout)
        data["top_stuck_users"] = [tuple(u) for u in data["top_stuck_users"]]
        return cls(**data)

    def differences(self, other: Summary) -> list[str]:
        return [f"{name}: {_short(getattr(self, name))} != {_short(getattr(other, name))}"
                for name in self.__dataclass_fields__
                if getattr(self, name) != getattr(other, name)]


def _short(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _psql_sections(stdout: str, statements: list[Statement]) -> dict[str, list[list[str]]]:
    """psql's unaligned output split at the `\\echo @@N` markers written before each statement."""
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in stdout.splitlines():
        if line.startswith("@@"):
            current = sections.setdefault(statements[int(line[2:])].role, [])
        elif line and current is not None:
            current.append(line.split("|"))
    return sections


def psql_script(statements: list[Statement]) -> str:
    return "".join(f"\\echo @@{n}\n{s.sql};\n" for n, s in enumerate(statements))


# --- the "before": every row through the ORM ------------------------------------------------

def orm_baseline(url: str) -> Summary:
    """The fleet's numbers the naive way: load every row as an object, count in Python."""
    from sqlalchemy import select

    from imagen4ctl.db.models import COMPLETED, IN_FLIGHT, Generation, utcnow
    from imagen4ctl.db.session import Database

    cutoff = utcnow().timestamp() - STUCK_AFTER
    db = Database(url)
    with db.session() as session:
        rows = session.scalars(select(Generation)).all()
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, status), n in Counter((r.kind, r.status) for r in rows).items():
        by_kind.setdefault(kind, {})[status] = n
    stuck = sorted((r for r in rows
                    if r.status in IN_FLIGHT and r.updated_at.timestamp() < cutoff),
                   key=lambda r: (r.created_at, r.id))
    top = sorted(Counter(r.user_id for r in stuck).items(), key=lambda un: (-un[1], un[0]))
    recent = sorted((r for r in rows if r.status == COMPLETED),
                    key=lambda r: (r.updated_at, r.id), reverse=True)
    return Summary(
        total=len(rows), users=len({r.user_id for r in rows}), by_kind=by_kind,
        stuck_count=len(stuck), stuck_ids=[r.id for r in stuck[:20]],
        top_stuck_users=top[:5], recent_ids=[r.id for r in recent[:5]],
    )


# --- set-up ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleUser:
    """A user to time one user's report for; the heaviest is also run through the CLI."""

    role: str
    user_id: str
    rows: int

    @property
    def label(self) -> str:
        return f"user {self.user_id} ({self.role}, {self.rows:,} rows)"


def fill(url: str, rows: int, users: int, stuck: int,
         after_fill: list[str]) -> list[SampleUser]:
    started = time.perf_counter()
    with pg_connect(url, autocommit=False) as conn:
        conn.execute(FILL_SQL, {"rows": rows, "users": users, "stuck": stuck})
        conn.execute("SELECT setval(pg_get_serial_sequence('generations', 'id'), "
                     "(SELECT max(id) FROM generations))")
    inserted = time.perf_counter()
    with pg_connect(url) as conn:
        for sql in after_fill:  # a candidate index, measured before it becomes a migration
            extra = time.perf_counter()
            conn.execute(sql)
            print(f"--after-fill ({time.perf_counter() - extra:.1f} s): {sql}")
        vacuum_started = time.perf_counter()
        # VACUUM too, not only ANALYZE: it sets the visibility map that index-only scans
        # rely on, as autovacuum would on a live table (and would otherwise do mid-run).
        conn.execute("VACUUM (ANALYZE) generations")
        done = time.perf_counter()
        size = _one(conn, "SELECT pg_size_pretty(pg_total_relation_size('generations'))")
        per_user = conn.execute(
            "SELECT user_id, count(*) AS n, max(updated_at) AS last FROM generations "
            "GROUP BY user_id ORDER BY n DESC, user_id")
        stuck_now = _one(conn, "SELECT count(*) FROM generations WHERE status IN "
                         "('PENDING', 'PROCESSING') AND updated_at < now() - interval '10 minutes'")
    print(f"filled {rows:,} rows in {done - started:.1f} s (INSERT … SELECT "
          f"{inserted - started:.1f} s, VACUUM ANALYZE {done - vacuum_started:.1f} s); "
          f"table + indexes {size}")
    if stuck_now != stuck:
        raise BenchError(f"the fill made {stuck_now} stuck rows, not {stuck}")
    heavy, typical = per_user[0], per_user[len(per_user) // 2]
    dormant = min(per_user, key=lambda row: row[2])
    print(f"{len(per_user):,} users, {stuck_now:,} stuck; heaviest {heavy[0]} has {heavy[1]:,} "
          f"rows, typical {typical[0]} {typical[1]:,}, dormant {dormant[0]} {dormant[1]:,} "
          f"(last one {(datetime.now(UTC) - dormant[2]).days} days ago)")
    return [SampleUser("heaviest", heavy[0], heavy[1]),
            SampleUser("typical", typical[0], typical[1]),
            SampleUser("dormant", dormant[0], dormant[1])]


def _one(conn: Pg, sql: str) -> Any:
    return conn.execute(sql)[0][0]


def capture_statements(db: Database, user_id: str | None) -> list[Statement]:
    """The statements user_report sends, as psycopg2 sends them (parameters inlined), for
    psql and EXPLAIN.

    The stuck cutoff is inlined as of now; every stuck row is hours old, so it selects the
    same rows as the CLI's own cutoff for the whole run.
    """
    from imagen4ctl.db.driver import bind, pyformat
    from imagen4ctl.db.generations import Statements
    from imagen4ctl.services import stats

    known = Statements(by_user=user_id is not None, by_kind=False)
    names = {getattr(known, name): name for name in ROLES}
    statements = []
    with db.read() as reader:
        send = reader.rows

        def rows(sql: str, **params: Any) -> list[tuple[Any, ...]]:
            if sql not in names:
                raise BenchError("user_report sent a statement this benchmark does not know; "
                                 f"teach ROLES in bench/stats.py about it: {sql}")
            role, label = ROLES[names[sql]]
            values = {k: bind(v, reader.backend) for k, v in params.items()}
            with reader.connection.cursor() as cursor:
                text = cursor.mogrify(pyformat(sql), values).decode()
            statements.append(Statement(role, label, text))
            return send(sql, **params)

        reader.rows = rows  # type: ignore[method-assign]
        stats.user_report(reader, user_id, stuck_after=STUCK_AFTER)
    return statements


# --- EXPLAIN ANALYZE ------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    label: str
    execution_ms: float
    top: str
    scans: list[str] = field(default_factory=list)
    jit_ms: float | None = None

    def lines(self) -> list[str]:
        jit = f", JIT {self.jit_ms:.1f} ms of it" if self.jit_ms else ""
        out = [f"  {self.label:<38} {self.execution_ms:9.1f} ms{jit}", f"      {self.top}"]
        out += [f"      scan: {s}" for s in self.scans]
        return out


def explain(url: str, statements: list[Statement]) -> list[Plan]:
    plans = []
    with pg_connect(url) as conn:
        for s in statements:
            lines = [r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {s.sql}")]
            execution = next(float(m.group(1)) for line in lines
                             if (m := re.search(r"Execution Time: ([\d.]+) ms", line)))
            jit = next((float(m.group(1)) for line in lines
                        if (m := re.search(r"Timing: .*Total ([\d.]+) ms", line))), None)
            scans = list(dict.fromkeys(
                _node(line) for line in lines if " Scan " in f" {_node(line)} "))
            plans.append(Plan(s.label, execution, _node(lines[0], keep_actual=True), scans, jit))
    return plans


def _node(line: str, *, keep_actual: bool = False) -> str:
    """A plan line without its arrow and cost estimate (and, for scans, without timings)."""
    text = re.sub(r"\s*\(cost=[^)]*\)", "", line.strip().removeprefix("->").strip())
    return text if keep_actual else re.sub(r"\s*\(actual[^)]*\)", "", text)


# --- the run --------------------------------------------------------------------------------

@dataclass
class Measurement:
    samples: Samples
    cmd: list[str]
    parse: Callable[[str], Summary] | None = None
    summaries: list[Summary] = field(default_factory=list)


def bench(args: argparse.Namespace, url: str, work: Path) -> None:
    from imagen4ctl.db.session import Database
    from imagen4ctl.settings import VARIABLES

    exe, psql = shutil.which("imagen4ctl"), shutil.which("psql")
    if exe is None or psql is None:
        raise BenchError("imagen4ctl and psql must be on PATH (pip install -e . ; apt install "
                         "postgresql-client)")
    # Only DATABASE_URL, and no .env (cwd is an empty folder): nothing else changes the run.
    env = clean_env([v.name for v in VARIABLES], DATABASE_URL=url)

    upgrade = run_timed([exe, "db", "upgrade"], env=env, cwd=work)
    print(f"imagen4ctl db upgrade: {upgrade.seconds:.1f} s")
    sample_users = fill(url, args.rows, args.users, args.stuck, args.after_fill)
    heaviest = sample_users[0]
    heavy = f"user {heaviest.user_id}"

    db = Database(url)
    try:
        fleet_sql = capture_statements(db, None)
        user_sql = {u: capture_statements(db, u.user_id) for u in sample_users}
        (work / "fleet.sql").write_text(psql_script(fleet_sql))
        (work / "user.sql").write_text(psql_script(user_sql[heaviest]))
        psql_cmd = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-f"]
        measurements = {
            "help": Measurement(Samples("a. imagen4ctl --help (start-up)"), [exe, "--help"]),
            "fleet": Measurement(Samples("b. user-images --json (fleet)"),
                                 [exe, "user-images", "--json"], Summary.from_cli),
            "user": Measurement(Samples(f"c. user-images {heaviest.user_id} --json"),
                                [exe, "user-images", heaviest.user_id, "--json"],
                                Summary.from_cli),
            "psql_fleet": Measurement(Samples("d. psql, fleet statements"),
                                      [*psql_cmd, str(work / "fleet.sql")],
                                      lambda out: Summary.from_psql(out, fleet_sql)),
            "psql_user": Measurement(Samples(f"d. psql, {heavy} statements"),
                                     [*psql_cmd, str(work / "user.sql")],
                                     lambda out: Summary.from_psql(out, user_sql[heaviest])),
            "orm": Measurement(Samples("e. ORM loads every row (before)"),
                               [sys.executable, __file__, "--orm-baseline", url],
                               Summary.from_json),
            # The same command for a user with no rows: what the database path costs before
            # any statement has work to do (imports, Typer's conversion, connecting).
            "empty": Measurement(Samples(f"f. user-images {NO_SUCH_USER} --json (no rows)"),
                                 [exe, "user-images", NO_SUCH_USER, "--json"]),
        }
        in_process = [InProcess(Samples("in-process user_report(), fleet"), None, 1)] + [
            InProcess(Samples(f"in-process, {u.label}"), u.user_id, IN_PROCESS_CALLS)
            for u in sample_users]
        run_rounds(args.repeat, list(measurements.values()), in_process, db, env, work)
    finally:
        db.dispose()

    check_agreement("fleet", [measurements[k] for k in ("fleet", "psql_fleet", "orm")])
    check_agreement(heavy, [measurements[k] for k in ("user", "psql_user")])
    fleet = measurements["fleet"].summaries[0]
    print(f"results agree: fleet {fleet.total:,} rows, {fleet.users:,} users, "
          f"{fleet.stuck_count:,} stuck (user-images, psql and the ORM baseline); "
          f"{heavy} too (user-images, psql)")

    print()
    print(SAMPLES_HEADER)
    for m in measurements.values():
        print(m.samples.row())
    for p in in_process:
        print(p.samples.row())
    report_targets(measurements, dict(zip(sample_users, in_process[1:], strict=True)))

    print("\nEXPLAIN ANALYZE, fleet statements (warm cache):")
    for plan in explain(url, fleet_sql):
        print("\n".join(plan.lines()))
    for u in sample_users:
        if u.role != "typical":  # the extremes are what decides an index
            print(f"EXPLAIN ANALYZE, {u.label}:")
            for plan in explain(url, user_sql[u]):
                print("\n".join(plan.lines()))


@dataclass(frozen=True)
class InProcess:
    samples: Samples
    user_id: str | None
    calls: int  # per round: one per-user call is a few ms, too short to time alone


def run_rounds(repeat: int, measurements: list[Measurement], in_process: list[InProcess],
               db: Database, env: dict[str, str], work: Path) -> None:
    """Every measurement once per round, so that a noisy minute hits all of them alike."""
    started = time.perf_counter()
    for n in range(repeat):
        # Rotated, so that no measurement always runs right after the heavy ORM load.
        for m in measurements[n % len(measurements):] + measurements[:n % len(measurements)]:
            run = run_timed(m.cmd, env=env, cwd=work)
            m.samples.values.append(run.seconds)
            if m.parse is not None:
                m.summaries.append(m.parse(run.stdout))
        for p in in_process:
            time_in_process(db, p.user_id, p.samples, p.calls)
        print(f"round {n + 1}/{repeat} done, {time.perf_counter() - started:.0f} s", flush=True)


def time_in_process(db: Database, user_id: str | None, samples: Samples, calls: int) -> None:
    from imagen4ctl.services import stats

    with db.read() as reader:
        stats.user_report(reader, user_id, stuck_after=STUCK_AFTER)  # warm: connection, cache
        for _ in range(calls):
            started = time.perf_counter()
            stats.user_report(reader, user_id, stuck_after=STUCK_AFTER)
            samples.values.append(time.perf_counter() - started)


def check_agreement(scope: str, measurements: list[Measurement]) -> None:
    """Every run of every way of counting gives the same numbers, or the benchmark fails."""
    reference = measurements[0]
    expected = reference.summaries[0]
    for m in measurements:
        for n, summary in enumerate(m.summaries, 1):
            if summary != expected:
                raise BenchError(
                    f"{scope} results disagree: {m.samples.label} (run {n}) vs "
                    f"{reference.samples.label}: " + "; ".join(expected.differences(summary)))


def report_targets(measurements: dict[str, Measurement],
                   per_user: dict[SampleUser, InProcess]) -> None:
    def verdict(ok: bool) -> str:
        return "meets target" if ok else "misses target"

    help_ = measurements["help"].samples.median
    empty = measurements["empty"].samples.median
    fleet = measurements["fleet"].samples.median
    psql_fleet = measurements["psql_fleet"].samples.median
    orm = measurements["orm"].samples.median
    work = fleet - help_
    print("\ntargets (medians):")
    print(f"  fleet - start-up <= {TARGET_FLEET_VS_PSQL:g}x psql: {ms(fleet)} - {ms(help_)} = "
          f"{ms(work)}, psql {ms(psql_fleet)}: {work / psql_fleet:.2f}x psql -> "
          f"{verdict(work <= TARGET_FLEET_VS_PSQL * psql_fleet)}")
    print(f"    of which the database path's start-up (f - a) {ms(empty - help_)}, "
          f"the fleet's statements (b - f) {ms(fleet - empty)}")
    slowest = max(p.samples.median for p in per_user.values())
    each = ", ".join(f"{u.role} {ms(p.samples.median)}" for u, p in per_user.items())
    print(f"  one user <= {TARGET_USER_SECONDS * 1000:g} ms of query time (in-process): {each} "
          f"-> {verdict(slowest <= TARGET_USER_SECONDS)}")
    print(f"  fleet >= {TARGET_ORM_SPEEDUP:g}x faster than ORM loading: {ms(orm)} / {ms(fleet)} = "
          f"{orm / fleet:.1f}x -> {verdict(orm / fleet >= TARGET_ORM_SPEEDUP)}")


def _machine(url: str) -> str:
    with pg_connect(url) as conn:
        server = _one(conn, "SHOW server_version")
        jit = _one(conn, "SHOW jit")
        buffers = _one(conn, "SHOW shared_buffers")
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
            f"PostgreSQL {server.split()[0]} (shared_buffers {buffers}, jit {jit})")


def _count(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark `imagen4ctl user-images` on a fresh PostgreSQL database.")
    parser.add_argument("--rows", type=_count, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--users", type=_count, default=10_000, help="default 10,000")
    parser.add_argument("--stuck", type=_count, default=10_000,
                        help="PENDING/PROCESSING rows hours to days old (default 10,000)")
    parser.add_argument("--repeat", type=_count, default=5,
                        help="runs of each measurement (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--dsn", default=DEFAULT_DSN,
                        help=f"PostgreSQL server to create the database on (default {DEFAULT_DSN})")
    parser.add_argument("--after-fill", metavar="SQL", action="append", default=[],
                        help="SQL to run after the fill, before VACUUM ANALYZE (repeatable), "
                        "e.g. a candidate index")
    parser.add_argument("--orm-baseline", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.users < 1 or args.repeat < 1:
        parser.error("--rows, --users and --repeat must be at least 1")
    if args.stuck > args.rows:
        parser.error("--stuck cannot exceed --rows")
    return args


def _terminated(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which drops the database


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.orm_baseline:  # the subprocess of measurement (e)
        print(json.dumps(orm_baseline(args.orm_baseline).to_json()))
        return 0
    signal.signal(signal.SIGTERM, _terminated)
    name = f"imagen4ctl_bench_{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="imagen4ctl-bench-") as tmp, \
                scratch_database(args.dsn, name, keep=args.keep) as url:
            print(f"database {name}; {_machine(url)}")
            print(f"{args.rows:,} rows, {args.users:,} users, {args.stuck:,} stuck, "
                  f"--repeat {args.repeat}")
            bench(args, url, Path(tmp))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
