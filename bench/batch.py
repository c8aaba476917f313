"""P2 — batch generation: `generate --from-file` against the fal emulator, in one run.

    python bench/batch.py [--latency 0.5] [--prompts 100] [--rounds 3] [--long-rounds 1]
                          [--storage local|s3]

The emulator runs in this process (HTTPS, fixed latency L per request); each measured command
is a subprocess pointed at it. Measured, interleaved in a shuffled order:

- `imagen4ctl generate --from-file prompts.txt --concurrency N --user-id b --json` for
  N = 1, 4, 16 (SQLite in a temp dir, a fresh copy of a migrated file per run; images in a
  local IMAGES_DIR, or a SeaweedFS bucket with --storage s3);
- the baseline: a plain sequential loop in a subprocess, `fal_client.subscribe` then the
  download of each image (one reused httpx client) into the same kind of storage.

Targets: wall time <= 1.15 x L x ceil(prompts / N), and >= 0.9 x N times faster than the
baseline. N = 1 and the baseline take ~prompts x L each, so they run `--long-rounds` times,
the short runs `--rounds` times. Timings are reported, never asserted; a run whose
generations did not all complete stops the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
from pathlib import Path

from _perf import (
    KEY,
    ROOT,
    BenchError,
    Samples,
    bench_env,
    fal_emulator,
    header,
    machine,
    run_measured,
    verdict,
)

MODEL = "fal-ai/imagen4/preview"
TARGET_WALL = 1.15
TARGET_SPEEDUP = 0.9

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
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]

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
        server = None
        if args.storage == "s3":
            from tests.plugins.s3 import SeaweedServer

            server = SeaweedServer(folder / "seaweedfs")
            server.start()
            server.admin_client().make_bucket("bench")
            env.update(MINIO_ENDPOINT=server.endpoint, MINIO_ACCESS_KEY=server.access_key,
                       MINIO_SECRET_KEY=server.secret_key, MINIO_BUCKET="bench")
        baseline = folder / "baseline.py"
        baseline.write_text(BASELINE)
        try:
            run_measured(cli("db", "upgrade"), env=env, cwd=work)
            samples, plan = _plan(levels, args.rounds, args.long_rounds)
            for number, label in enumerate(plan):
                emulator.reset()  # its submit scans every job it knows
                db = folder / f"run{number}.db"
                shutil.copy(template, db)
                run_env = {**env, "DATABASE_URL": f"sqlite:///{db}",
                           "PYTHONPATH": str(ROOT)}
                if label == "baseline":
                    run = run_measured([sys.executable, str(baseline), str(prompts), MODEL],
                                       env=run_env, cwd=work)
                    if int(run.stdout.strip() or 0) != args.prompts:
                        raise BenchError(f"the baseline stored {run.stdout.strip()} images")
                else:
                    n = int(label.split("=")[1])
                    run = run_measured(cli("generate", "--from-file", str(prompts),
                                           "--concurrency", str(n), "--user-id", "b", "--json"),
                                       env=run_env, cwd=work)
                    completed(run.stdout, args.prompts)
                samples[label].values.append(run.seconds)
                print(f"  {label:<10} {run.seconds:7.2f} s  peak RSS {run.peak_rss_mb:6.1f} MB",
                      flush=True)
        finally:
            if server is not None:
                server.stop()

    report(samples, levels, args)
    return 0


def _plan(levels: list[int], rounds: int, long_rounds: int) -> tuple[dict[str, Samples], list[str]]:
    """Which runs, in a shuffled order per round; the long ones only in the first rounds."""
    labels = ["baseline", *(f"N={n}" for n in levels)]
    samples = {label: Samples(label) for label in labels}
    plan: list[str] = []
    for r in range(max(rounds, long_rounds)):
        this = [label for label in labels
                if (r < long_rounds if label in ("baseline", "N=1") else r < rounds)]
        random.shuffle(this)
        plan += this
    return samples, plan


def report(samples: dict[str, Samples], levels: list[int], args: argparse.Namespace) -> None:
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
    base = samples["baseline"].median
    print()
    print(f"{'N':>3} {'median s':>9} {'target s':>9} {'wall':>7} {'speed-up':>9} "
          f"{'target':>7} {'speed':>7} {'ideal':>7}")
    for n in levels:
        s = samples[f"N={n}"]
        if not s.values:
            continue
        target = TARGET_WALL * L * math.ceil(count / n)
        speedup = base / s.median
        print(f"{n:>3} {s.median:>9.2f} {target:>9.2f} {verdict(s.median <= target):>7} "
              f"{speedup:>8.2f}x {TARGET_SPEEDUP * n:>6.1f}x "
              f"{verdict(speedup >= TARGET_SPEEDUP * n):>7} "
              f"{count / math.ceil(count / n):>6.2f}x")
    print(f"\nbaseline (sequential fal_client.subscribe + download): {base:.2f} s, "
          f"{base / count:.3f} s per prompt vs L = {L:g} s")
    print("ideal: the speed-up of perfect rounds, prompts / ceil(prompts / N), before any "
          "start-up")


if __name__ == "__main__":
    sys.exit(main())
