"""A/B: `generate --from-file` for this checkout and another revision, interleaved in one run.

    python bench/ab.py REV [--pip 'typer==0.29.2' …] [--latency 0.5] [--concurrency 16]
                           [--prompts 100] [--rounds 10] [--vary FRACTION]

REV is checked out into a temporary git worktree. With `--pip`, those requirements are
installed (without their dependencies) into a temporary folder that comes first on REV's
`sys.path` only, so that a change of dependency is measured with the code that came with it.
Both sides run through the same small launcher (`python -c …`), which imports imagen4ctl from
its tree rather than through the editable install. Runs alternate in a shuffled order per
round against one emulator; a run whose generations did not all complete stops the benchmark.

Reported per side (medians, with min and max): the wall time; the first submission, from the
process start to the emulator's log of it (imports, settings, rows); the rest, wall minus
first submission (the batch itself); and the drift, how much later than whole waves of L
after the first the last submission went out: each wave's turnover (a completion seen, the
next submission sent) adds to it, and the wall moves with it. Then REV / this checkout for
each.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import compile_package
from _perf import (
    KEY,
    LAUNCHER,
    ROOT,
    BenchError,
    Samples,
    bench_env,
    fal_emulator,
    header,
    machine,
)
from batch import completed, write_prompts

MEASURES = ("wall", "first", "rest", "drift")


def worktree(rev: str, folder: Path) -> Path:
    tree = folder / "rev"
    done = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f",
                           str(tree), rev], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"cannot check out {rev}: {done.stderr.strip()}")
    return tree


def pip_target(requirements: list[str], folder: Path) -> Path:
    target = folder / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(target), *requirements],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"pip could not install {' '.join(requirements)}: "
                         + done.stderr.strip().splitlines()[-1])
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the other revision (a commit, tag or branch)")
    parser.add_argument("--pip", action="append", default=[],
                        help="a requirement for REV's side only (repeatable)")
    parser.add_argument("--latency", type=float, default=0.5, help="L, seconds per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--vary", type=float, default=0.0, metavar="FRACTION",
                        help="each request's latency drawn from L x (1 ± FRACTION), the same "
                        "draws for both sides")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="imagen4ctl-ab-") as tmp:
        folder = Path(tmp)
        tree = worktree(args.rev, folder)
        try:
            compile_package(tree)
            rev_paths = [str(tree)]
            if args.pip:
                rev_paths.insert(0, str(pip_target(args.pip, folder)))
            sides = {"this checkout": [str(ROOT)], args.rev: rev_paths}
            samples = measure(sides, args, folder)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)
    report(samples, list(sides), args)
    return 0


def measure(sides: dict[str, list[str]], args: argparse.Namespace, folder: Path
            ) -> dict[str, dict[str, Samples]]:
    samples = {side: {what: Samples(f"{side}: {what}") for what in MEASURES} for side in sides}
    waves = math.ceil(args.prompts / args.concurrency)
    with fal_emulator(args.latency) as emulator:
        work = folder / "work"
        work.mkdir()
        (folder / "images").mkdir()
        prompts = write_prompts(folder / "prompts.txt", args.prompts, args.latency, args.vary)
        template = folder / "template.db"
        env = bench_env(**emulator.env(), FAL_KEY=KEY, HOME=str(work),
                        DATABASE_URL=f"sqlite:///{template}", IMAGES_DIR=str(folder / "images"))
        launcher = [sys.executable, "-c", LAUNCHER]
        subprocess.run([*launcher, str(ROOT), "db", "upgrade"], env=env, cwd=work, check=True,
                       capture_output=True)
        for number in range(args.rounds):
            order = list(sides)
            random.shuffle(order)
            for side in order:
                emulator.reset()
                db = folder / f"run{number}-{order.index(side)}.db"
                shutil.copy(template, db)
                started_at = datetime.now(UTC)
                wall = timed([*launcher, os.pathsep.join(sides[side]), "generate",
                              "--from-file", str(prompts), "--concurrency",
                              str(args.concurrency), "--user-id", "b", "--json"],
                             {**env, "DATABASE_URL": f"sqlite:///{db}"}, work, args.prompts)
                sent = sorted((e.at - started_at).total_seconds()
                              for e in emulator.log.entries("submit"))
                first = sent[0]
                drift = sent[-1] - first - (waves - 1) * args.latency
                for what, value in zip(MEASURES, (wall, first, wall - first, drift), strict=True):
                    samples[side][what].values.append(value)
                print(f"  {side:<16} wall {wall:6.2f} s  first submission {first:5.2f} s  "
                      f"drift {drift * 1000:4.0f} ms", flush=True)
    return samples


def timed(cmd: list[str], env: dict[str, str], cwd: Path, prompts: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"generate exited {done.returncode}: "
                         + " | ".join(done.stderr.strip().splitlines()[-4:]))
    completed(done.stdout, prompts)
    return seconds


def report(samples: dict[str, dict[str, Samples]], sides: list[str],
           args: argparse.Namespace) -> None:
    print(f"\nA/B generate --from-file — {machine()}")
    spread = f" x (1 ± {args.vary:g})" if args.vary else ""
    print(f"{args.prompts} prompts, N = {args.concurrency}, emulator latency L = "
          f"{args.latency:g} s{spread}, {args.rounds} interleaved rounds, SQLite, local images"
          + (f"; {sides[1]} with {' '.join(args.pip)}" if args.pip else "") + "\n")
    print(header("s"))
    for side in sides:
        for s in samples[side].values():
            print(s.row("ms" if s.label.endswith("drift") else "s"))
    this, other = (samples[side] for side in sides)
    print()
    for what in MEASURES:
        print(f"{what:>5}: {sides[1]} / this checkout = "
              f"{other[what].median / this[what].median:.3f}x "
              f"({other[what].median - this[what].median:+.3f} s)")


if __name__ == "__main__":
    sys.exit(main())
