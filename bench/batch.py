"""P2 — batch generation: `generate --from-file` against the fal emulator, in one run.

    python bench/batch.py [--latency 0.5] [--prompts 100] [--rounds 3] [--long-rounds 1]
                          [--storage local|s3] [--follow auto,poll] [--rev REV]
                          [--no-baseline]

The emulator runs in this process (HTTPS, fixed latency L per request); each measured command
is a subprocess pointed at it. Measured, interleaved in a shuffled order:

- `imagen4ctl generate --from-file prompts.txt --concurrency N --user-id b --json` for
  N = 1, 4, 16 (SQLite in a temp dir, a fresh copy of a migrated file per run; images in a
  local IMAGES_DIR, or a SeaweedFS bucket with --storage s3), once per IMAGEN4_FOLLOW value
  of `--follow` (auto: fal's status stream; poll: a status call every 0.1 s; webhook: see
  below), and with
  `--rev REV` also that revision of imagen4ctl (extracted with `git archive`, run through
  the launcher ab.py uses, its own migrated file);
- the baseline: a plain sequential loop in a subprocess, `fal_client.subscribe` then the
  download of each image (one reused httpx client) into the same kind of storage;
- `--follow webhook`: only the worker receives fal's webhooks, so the prompts go in as rows
  the bot queued and `imagen4ctl worker --once --concurrency N --webhook-url --webhook-port`
  drains them (FAL_MAX_CONCURRENT = N), the emulator posting each request's end to it; its
  wall includes the worker's own start and last pass.

Reported from the emulator's request log: the requests to fal per generation (submit,
status, stream, result, cancel; image downloads apart), target <= 4 when the stream is used;
and the first submission (process start to the emulator's log of it), for the wall against
the ideal L x ceil(prompts / N): target <= 1.05 x ideal + first submission. Also wall time
<= 1.15 x L x ceil(prompts / N), and >= 0.9 x N times faster than the baseline. N = 1 and the
baseline take ~prompts x L each, so they run `--long-rounds` times, the short runs `--rounds`
times. Timings are reported, never asserted; a run whose generations did not all complete
stops the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from _common import compile_package, free_port, start_bucket
from _perf import (
    KEY,
    LAUNCHER,
    ROOT,
    BenchError,
    Run,
    Samples,
    bench_env,
    fal_emulator,
    header,
    machine,
    run_measured,
    verdict,
)

if TYPE_CHECKING:
    from imagen4ctl.emulator.log import LogEntry

MODEL = "fal-ai/imagen4/preview"
TARGET_WALL = 1.15
TARGET_SPEEDUP = 0.9
TARGET_IDEAL = 1.05  # x L x ceil(prompts / N), plus the first submission
TARGET_CALLS = 4  # requests to fal per generation, when the stream is used
CALLS = ("submit", "status", "stream", "result", "cancel")
STREAMING = ("auto", "stream")  # the IMAGEN4_FOLLOW values that use the stream
WEBHOOK = "webhook"  # the worker, told by fal's webhooks (run_webhook)

BASELINE = '''\
"""The plain way: one fal_client.subscribe after the other, each image downloaded and stored."""
import os
import sys

import fal_client
import httpx

from imagen4ctl.adapters.storage import LocalStorage, S3Storage

if os.environ.get("MINIO_ENDPOINT"):
    storage = S3Storage(os.environ["MINIO_ENDPOINT"], os.environ["MINIO_ACCESS_KEY"],
                        os.environ["MINIO_SECRET_KEY"], os.environ["MINIO_BUCKET"])
else:
    storage = LocalStorage(os.environ["IMAGES_DIR"])
prompts = [line for line in open(sys.argv[1], encoding="utf-8").read().splitlines() if line]
stored = 0
with httpx.Client() as http:
    for n, prompt in enumerate(prompts):
        result = fal_client.subscribe(sys.argv[2], arguments={
            "prompt": prompt, "aspect_ratio": "1:1", "num_images": 1})
        for i, image in enumerate(result["images"]):
            response = http.get(image["url"])
            response.raise_for_status()
            storage.put_bytes(f"baseline/{n}/{i}.png", response.content,
                              content_type="image/png")
            stored += 1
print(stored)
'''


def latency_fault(latency: float, vary: float, index: int) -> str:
    """The emulator's per-prompt latency directive for prompt `index`, or nothing."""
    if not vary:
        return ""
    draw = random.Random(f"bench-latency:{index}").uniform(1 - vary, 1 + vary)
    return f" [fault:latency={latency * draw:.3f}]"


def write_prompts(path: Path, count: int, latency: float, vary: float) -> Path:
    """The benchmark's prompts file: the same prompts (and latency draws) for every run."""
    path.write_text("".join(f"bench prompt {i}: a lighthouse at dusk, take {i}"
                            f"{latency_fault(latency, vary, i)}\n" for i in range(count)))
    return path


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "imagen4ctl"), *args]


def completed(stdout: str, expected: int) -> None:
    items = json.loads(stdout)
    done = sum(1 for item in items if item["status"] == "COMPLETED")
    if done != expected:
        raise BenchError(f"only {done} of {expected} generations completed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.5, help="L, seconds per request")
    parser.add_argument("--queue-fraction", type=float, default=0.3)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of N > 1")
    parser.add_argument("--long-rounds", type=int, default=1,
                        help="repeats of N = 1 and of the baseline")
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--vary", type=float, default=0.0, metavar="FRACTION",
                        help="each request's latency drawn from L x (1 ± FRACTION), the same "
                        "draws every run (the wall targets then assume L for all)")
    parser.add_argument("--emulator-nagle", action="store_true",
                        help="leave Nagle's algorithm on in the emulator (+~40 ms a response)")
    parser.add_argument("--follow", default="auto", metavar="MODES",
                        help="IMAGEN4_FOLLOW values to measure, comma-separated: auto, stream, "
                        "poll; and webhook (the worker, told by fal's webhooks)")
    parser.add_argument("--rev", metavar="REV",
                        help="also measure this revision (e.g. the commit before a change)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the sequential fal_client baseline (prompts x L seconds)")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    sides = [mode.strip() for mode in args.follow.split(",")] + ([args.rev] if args.rev else [])

    with tempfile.TemporaryDirectory(prefix="imagen4ctl-batch-") as tmp, \
            fal_emulator(args.latency, args.queue_fraction, nagle=args.emulator_nagle) \
            as emulator:
        folder = Path(tmp)
        work = folder / "work"
        work.mkdir()
        prompts = write_prompts(folder / "prompts.txt", args.prompts, args.latency, args.vary)
        template = folder / "template.db"
        (folder / "images").mkdir()
        env = bench_env(**emulator.env(), FAL_KEY=KEY, HOME=str(work),
                        DATABASE_URL=f"sqlite:///{template}",
                        IMAGES_DIR=str(folder / "images"))
        server = start_bucket(folder, env) if args.storage == "s3" else None
        baseline = folder / "baseline.py"
        baseline.write_text(BASELINE)
        try:
            run_measured(cli("db", "upgrade"), env=env, cwd=work)
            rev = revision(args.rev, folder, env, work) if args.rev else None
            samples, plan = _plan(levels, sides, args)
            calls: dict[str, list[Counter[str]]] = {label: [] for label in samples}
            firsts: dict[str, Samples] = {label: Samples(label) for label in samples}
            for number, label in enumerate(plan):
                emulator.reset()  # its submit scans every job it knows; the log is per run
                db = folder / f"run{number}.db"
                side = label.split(" ", 1)[-1]
                shutil.copy(rev[1] if rev is not None and side == args.rev else template, db)
                run_env = {**env, "DATABASE_URL": f"sqlite:///{db}",
                           "PYTHONPATH": str(ROOT)}
                started_at = datetime.now(UTC)
                if label == "baseline":
                    run = run_measured([sys.executable, str(baseline), str(prompts), MODEL],
                                       env=run_env, cwd=work)
                    if int(run.stdout.strip() or 0) != args.prompts:
                        raise BenchError(f"the baseline stored {run.stdout.strip()} images")
                else:
                    n = label.split()[0].split("=")[1]
                    command = ["generate", "--from-file", str(prompts), "--concurrency", n,
                               "--user-id", "b", "--json"]
                    if rev is not None and side == args.rev:
                        run = run_measured([sys.executable, "-c", LAUNCHER, str(rev[0]),
                                            *command], env=run_env, cwd=work)
                    elif side == WEBHOOK:
                        run = run_webhook(prompts, n, run_env, db, work, emulator.base_url)
                    else:
                        run = run_measured(cli(*command), cwd=work,
                                           env={**run_env, "IMAGEN4_FOLLOW": side})
                    if side != WEBHOOK:
                        completed(run.stdout, args.prompts)
                first = min(e.at for e in emulator.log.entries("submit"))
                firsts[label].values.append((first - started_at).total_seconds())
                calls[label].append(per_generation(emulator.log.entries(), args.prompts))
                samples[label].values.append(run.seconds)
                made = calls[label][-1]
                print(f"  {label:<18} {run.seconds:7.2f} s  first submission "
                      f"{firsts[label].values[-1]:5.2f} s  {sum(made[k] for k in CALLS):5.2f} "
                      f"requests a generation  peak RSS {run.peak_rss_mb:6.1f} MB", flush=True)
        finally:
            if server is not None:
                server.stop()

    report(samples, firsts, calls, levels, sides, args)
    return 0


def run_webhook(prompts: Path, n: str, env: dict[str, str], db: Path, work: Path,
                fal_url: str) -> Run:
    """The prompts as rows the bot queued, drained by `worker --once` with fal's webhooks."""
    import sqlite3
    from contextlib import closing

    lines = [line for line in prompts.read_text(encoding="utf-8").splitlines() if line]
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")  # as SQLAlchemy stores it
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.executemany(
            "INSERT INTO generations (user_id, kind, status, prompt, aspect_ratio, created_at, "
            "updated_at) VALUES ('b', 'imagen4', 'PENDING', ?, '1:1', ?, ?)",
            [(line, now, now) for line in lines])
    port = str(free_port())
    run = run_measured(cli("worker", "--once", "--concurrency", n, "--webhook-port", port,
                           "--webhook-url", f"http://127.0.0.1:{port}/fal/webhook"), cwd=work,
                       env={**env, "FAL_MAX_CONCURRENT": n,
                            "FAL_WEBHOOK_JWKS_URL": f"{fal_url}/.well-known/jwks.json"})
    with closing(sqlite3.connect(db)) as connection:
        done = connection.execute(
            "SELECT count(*) FROM generations WHERE status = 'COMPLETED'").fetchone()[0]
    if done != len(lines):
        raise BenchError(f"only {done} of {len(lines)} generations completed")
    return run


def revision(rev: str, folder: Path, env: dict[str, str], work: Path) -> tuple[Path, Path]:
    """REV's tree (from `git archive`, compiled) and a database file migrated by it."""
    tree = folder / "rev"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True)
    if archive.returncode != 0:
        raise BenchError(f"cannot read {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    compile_package(tree)
    template = folder / "template-rev.db"
    run_measured([sys.executable, "-c", LAUNCHER, str(tree), "db", "upgrade"], cwd=work,
                 env={**env, "DATABASE_URL": f"sqlite:///{template}"})
    return tree, template


def per_generation(entries: list[LogEntry], prompts: int) -> Counter[str]:
    """Requests to fal a generation made, by kind, averaged; image downloads as "file"."""
    counts = Counter(e.kind for e in entries if e.kind in (*CALLS, "file"))
    return Counter({kind: counts[kind] / prompts for kind in (*CALLS, "file")})


def _plan(levels: list[int], sides: list[str], args: argparse.Namespace
          ) -> tuple[dict[str, Samples], list[str]]:
    """Which runs, in a shuffled order per round; the long ones only in the first rounds."""
    labels = [] if args.no_baseline else ["baseline"]
    labels += [f"N={n} {side}" for n in levels for side in sides]
    samples = {label: Samples(label) for label in labels}
    plan: list[str] = []
    for r in range(max(args.rounds, args.long_rounds)):
        this = [label for label in labels
                if (r < args.long_rounds if label == "baseline" or label.startswith("N=1 ")
                    else r < args.rounds)]
        random.shuffle(this)
        plan += this
    return samples, plan


def report(samples: dict[str, Samples], firsts: dict[str, Samples],
           calls: dict[str, list[Counter[str]]], levels: list[int], sides: list[str],
           args: argparse.Namespace) -> None:
    L, count = args.latency, args.prompts
    print(f"\nP2 batch generation — {machine()}")
    nagle = "on (as is)" if args.emulator_nagle else "off"
    spread = f" x (1 ± {args.vary:g})" if args.vary else ""
    print(f"{count} prompts, emulator latency L = {L:g} s{spread} (queue fraction "
          f"{args.queue_fraction:g}, Nagle {nagle}), storage {args.storage}, SQLite\n")
    print(header("s"))
    for s in samples.values():
        if s.values:
            print(s.row("s"))
    measured = [(n, side, f"N={n} {side}") for n in levels for side in sides
                if samples[f"N={n} {side}"].values]
    base = samples["baseline"].median if samples.get("baseline", Samples("")).values else None
    print()
    print(f"{'run':<18} {'median s':>9} {'target s':>9} {'wall':>7} {'speed-up':>9} "
          f"{'target':>7} {'speed':>7} {'ideal':>7}")
    for n, _, label in measured:
        s = samples[label]
        target = TARGET_WALL * L * math.ceil(count / n)
        speedup = f"{base / s.median:>8.2f}x" if base else f"{'-':>9}"
        speed = verdict(base / s.median >= TARGET_SPEEDUP * n) if base else "-"
        print(f"{label:<18} {s.median:>9.2f} {target:>9.2f} {verdict(s.median <= target):>7} "
              f"{speedup} {TARGET_SPEEDUP * n:>6.1f}x {speed:>7} "
              f"{count / math.ceil(count / n):>6.2f}x")
    if base:
        print(f"\nbaseline (sequential fal_client.subscribe + download): {base:.2f} s, "
              f"{base / count:.3f} s per prompt vs L = {L:g} s")
        print("ideal: the speed-up of perfect rounds, prompts / ceil(prompts / N), before any "
              "start-up")

    print("\nrequests to fal per generation (mean of the runs), image downloads apart")
    print(f"{'run':<18} " + " ".join(f"{kind:>7}" for kind in CALLS)
          + f" {'total':>7} {'target':>7} {'files':>7}")
    for _, side, label in measured:
        mean = {kind: sum(c[kind] for c in calls[label]) / len(calls[label])
                for kind in (*CALLS, "file")}
        total = sum(mean[kind] for kind in CALLS)
        target = verdict(total <= TARGET_CALLS) if side in (*STREAMING, WEBHOOK) else "-"
        print(f"{label:<18} " + " ".join(f"{mean[kind]:>7.2f}" for kind in CALLS)
              + f" {total:>7.2f} {target:>7} {mean['file']:>7.2f}")

    print(f"\nwall against the ideal L x ceil({count} / N) (medians; target "
          f"{TARGET_IDEAL:g} x ideal + first submission)")
    print(f"{'run':<18} {'ideal s':>8} {'first s':>8} {'target s':>9} {'wall s':>8} "
          f"{'wall/ideal':>10} {'verdict':>8}")
    for n, _, label in measured:
        ideal = L * math.ceil(count / n)
        first = firsts[label].median
        wall = samples[label].median
        target = TARGET_IDEAL * ideal + first
        print(f"{label:<18} {ideal:>8.2f} {first:>8.2f} {target:>9.2f} {wall:>8.2f} "
              f"{wall / ideal:>10.3f} {verdict(wall <= target):>8}")


if __name__ == "__main__":
    sys.exit(main())
