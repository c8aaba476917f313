"""P4 — scans at scale: `fix-pending` (dry run) over 1,000,000 rows on PostgreSQL.

    python bench/scan.py [--rows 1000000] [--stuck 10000] [--repeat 5] [--dsn postgresql://…]

A fresh database (dropped afterwards) is filled by PostgreSQL itself with one INSERT … SELECT
over generate_series. The 10,000 stuck imagen4 rows (unchanged for hours, spread evenly over
the ids) are, by default:

- 90 % PENDING, never submitted (no request id, no submission mark): no fal call;
- 8 % PROCESSING with a request id that fal (the emulator) has, COMPLETED: a status call;
- 1 % PROCESSING with a request id still running at fal (`run=hang`): a status call;
- 1 % PROCESSING with a request id fal no longer knows (expired): a status call answered
  404, then a Platform API look-up.

The request ids of the known ones come from real submissions with `fal_client` to the emulator
before the measurement. Around them: 990,000 rows of five kinds, COMPLETED or FAILED, and 5,000
other-kind rows stuck (not imagen4: filtered out by the query).

`imagen4ctl fix-pending --json` runs `--repeat` times as a subprocess; its wall time and its
own peak RSS (wait4) are reported as medians, and its JSON must add up to the mix above.
Targets: <= 3 s and <= 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import DEFAULT_DSN, database_url, pg_connect, scratch_database
from _perf import KEY, BenchError, Samples, bench_env, fal_emulator, machine, run_measured, verdict

TARGET_SECONDS = 3.0
TARGET_MB = 150.0
MODEL = "fal-ai/imagen4/preview"

# Per 100 stuck rows: which share is in which state (the remainder: never submitted).
MIX = {"known_completed": 8, "known_running": 1, "expired": 1}

FILL_SQL = """
WITH drawn AS (
    SELECT i,
           mod(hashint8extended(i, 11) & 1073741823, 100) AS r_kind,
           mod(hashint8extended(i, 12) & 1073741823, 100) AS r_status,
           mod(hashint8extended(i, 13) & 1073741823, 1000) AS r_misc,
           -- exactly %(stuck)s imagen4 rows stuck, spread evenly over the ids
           (i * %(stuck)s::bigint) / %(rows)s::bigint
               <> ((i - 1) * %(stuck)s::bigint) / %(rows)s::bigint AS stuck,
           -- and %(other)s rows of other kinds stuck, elsewhere
           ((i + 7) * %(other)s::bigint) / %(rows)s::bigint
               <> ((i + 6) * %(other)s::bigint) / %(rows)s::bigint AS other_stuck,
           now() - interval '2 hours'
               - (%(rows)s::bigint - i) * (interval '180 days' / %(rows)s::bigint) AS created_at
    FROM generate_series(1::bigint, %(rows)s::bigint) AS i
), shaped AS (
    SELECT i, r_misc, created_at, stuck,
           CASE WHEN stuck THEN 'imagen4'
                WHEN other_stuck THEN 'avatar'
                WHEN r_kind < 55 THEN 'imagen4' WHEN r_kind < 90 THEN 'avatar'
                WHEN r_kind < 95 THEN 'upscale' WHEN r_kind < 98 THEN 'sticker'
                ELSE 'imagen3-legacy' END AS kind,
           CASE WHEN stuck OR other_stuck THEN 'PENDING'
                WHEN r_status < 92 THEN 'COMPLETED' ELSE 'FAILED' END AS status,
           (100000000 + mod(i * 7919, 50000))::text AS user_id
    FROM drawn
)
INSERT INTO generations (id, user_id, kind, status, prompt, aspect_ratio, fal_request_id,
                         result_urls, error, created_at, updated_at, fal_endpoint, params,
                         submitted_at, completed_at)
SELECT i, user_id, kind, status,
       (ARRAY['A cat playing with a ball', 'A lighthouse on a cliff during a storm',
              'Minimalist logo of a fox, flat vector', 'A bowl of ramen, studio photo'
       ])[1 + mod(r_misc, 4)] || ', take ' || i,
       (ARRAY['1:1', '3:4', '4:3', '9:16', '16:9'])[1 + mod(r_misc, 5)],
       CASE WHEN status <> 'PENDING' THEN md5(i::text)::uuid::text END,
       CASE WHEN status = 'COMPLETED'
            THEN jsonb_build_array('generations/' || user_id || '/' || i || '/0.png') END,
       CASE WHEN status = 'FAILED' THEN 'fal rejected the request (422): content policy' END,
       created_at,
       created_at + make_interval(secs => 1 + mod(r_misc, 40)),
       'fal-ai/imagen4/preview',
       jsonb_build_object('num_images', 1),
       CASE WHEN status <> 'PENDING' THEN created_at + interval '1 second' END,
       CASE WHEN status = 'COMPLETED' THEN created_at + make_interval(secs => 5) END
FROM shaped
"""


def submit_known(env: dict[str, str], count: int, *, hang: bool) -> list[str]:
    """Request ids of real submissions to the emulator, through fal_client itself."""
    os.environ.update(env)  # fal_client reads its hosts when it is imported
    import fal_client

    client = fal_client.SyncClient(key=KEY)
    suffix = " [fault:run=hang]" if hang else ""

    def submit(n: int) -> str:
        handle = client.submit(MODEL, arguments={"prompt": f"scan {n}{suffix}"})
        return str(handle.request_id)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(submit, range(count)))


def fill(dsn: str, database: str, rows: int, stuck: int, ids: dict[str, list[str]]) -> None:
    with pg_connect(database_url(dsn, database)) as conn:
        conn.execute(FILL_SQL, {"rows": rows, "stuck": stuck, "other": stuck // 2})
        stuck_ids = [r[0] for r in conn.execute(
            "SELECT id FROM generations WHERE kind = 'imagen4' AND status = 'PENDING' "
            "ORDER BY id")]
        if len(stuck_ids) != stuck:
            raise BenchError(f"the fill made {len(stuck_ids)} stuck rows, not {stuck}")
        chosen: dict[str, list[int]] = {name: [] for name in ids}
        for rank, row_id in enumerate(stuck_ids):
            share = rank % 100
            for name, start, end in _shares():
                if start <= share < end:
                    chosen[name].append(row_id)
        for name, row_ids in chosen.items():
            conn.execute(
                "UPDATE generations AS g SET status = 'PROCESSING', fal_request_id = d.rid, "
                "submit_started_at = g.created_at, submitted_at = g.created_at "
                "FROM unnest(%s::int[], %s::text[]) AS d(id, rid) WHERE g.id = d.id",
                (row_ids, ids[name][:len(row_ids)]))
        conn.execute("VACUUM ANALYZE generations")


def _shares() -> list[tuple[str, int, int]]:
    shares, start = [], 100 - sum(MIX.values())
    for name, share in MIX.items():
        shares.append((name, start, start + share))
        start += share
    return shares


def expected_actions(stuck: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for rank in range(stuck):
        share = rank % 100
        name = next((n for n, s, e in _shares() if s <= share < e), "never_submitted")
        counts[{"never_submitted": "fail", "known_completed": "recover",
                "known_running": "wait", "expired": "fail"}[name]] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stuck", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="fix-pending --concurrency")
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in MIX.items()),
                        help="per 100 stuck rows (the rest never submitted)")
    args = parser.parse_args()
    MIX.update({k: int(v) for k, v in (item.split("=") for item in args.mix.split(","))})
    per_share = -(-args.stuck // 100)
    database = f"imagen4ctl_bench_scan_{os.getpid()}"
    entry = str(Path(sys.executable).parent / "imagen4ctl")
    seconds, rss = Samples("fix-pending --json wall time"), Samples("peak RSS")

    with tempfile.TemporaryDirectory(prefix="imagen4ctl-scan-") as tmp, \
            fal_emulator(0.05) as emulator:
        work = Path(tmp)
        with scratch_database(args.dsn, database) as url:
            env = bench_env(**emulator.env(), FAL_KEY=KEY, HOME=str(work), DATABASE_URL=url)
            began = time.perf_counter()
            ids = {"known_completed": submit_known(env, per_share * MIX["known_completed"],
                                                   hang=False),
                   "known_running": submit_known(env, per_share * MIX["known_running"],
                                                 hang=True),
                   "expired": [f"expired-{n:08d}-0000-4000-8000-000000000000"
                               for n in range(per_share * MIX["expired"])]}
            run_measured([entry, "db", "upgrade"], env=env, cwd=work)
            fill(args.dsn, database, args.rows, args.stuck, ids)
            print(f"filled {args.rows:,} rows in {time.perf_counter() - began:.1f} s", flush=True)
            time.sleep(0.2)  # the emulator's latency: the known requests are COMPLETED now
            want = expected_actions(args.stuck)
            for _ in range(args.repeat):
                run = run_measured([entry, "fix-pending", "--json", "--concurrency",
                                    str(args.concurrency)], env=env, cwd=work, ok_codes=(0, 1))
                report = json.loads(run.stdout)
                got = Counter({k: v for k, v in report["actions"].items() if v})
                if report["found"] != args.stuck or got != want:
                    raise BenchError(f"fix-pending found {report['found']} with {dict(got)}, "
                                     f"expected {args.stuck} with {dict(want)}")
                seconds.values.append(run.seconds)
                rss.values.append(run.peak_rss_mb)
                print(f"  {run.seconds:6.2f} s  peak RSS {run.peak_rss_mb:6.1f} MB  "
                      f"exit {run.returncode}", flush=True)
            calls = Counter(entry.kind for entry in emulator.log)

    print(f"\nP4 fix-pending scan — {machine()}")
    print(f"{args.rows:,} rows, {args.stuck:,} stuck imagen4 rows: "
          + ", ".join(f"{n:,} {a}" for a, n in sorted(want.items()))
          + f"; --concurrency {args.concurrency}; PostgreSQL; {args.repeat} runs")
    print(f"fal calls over all runs (incl. the set-up's submissions): {dict(calls)}\n")
    print(f"wall time  median {seconds.median:6.2f} s  (min {min(seconds.values):.2f}, max "
          f"{max(seconds.values):.2f})  target <= {TARGET_SECONDS:g} s: "
          f"{verdict(seconds.median <= TARGET_SECONDS)}")
    print(f"peak RSS   median {rss.median:6.1f} MB (min {min(rss.values):.1f}, max "
          f"{max(rss.values):.1f})  target <= {TARGET_MB:g} MB: "
          f"{verdict(rss.median <= TARGET_MB)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
