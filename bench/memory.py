"""P3 — memory: peak RSS of a `generate --from-file` batch storing 8 MB images in S3.

    python bench/memory.py [--prompts 48] [--concurrency 16] [--rounds 3] [--image-size 8MB]

The fal emulator serves every image as an 8 MB PNG (its run-wide fault `file=large:8MB`: a
real PNG header padded with zeros, which passes the image checks); a SeaweedFS server
(`weed mini`, as in the tests) is the bucket; SQLite in a temp dir. Each run is a
subprocess whose own peak RSS comes from `wait4` once it has exited.

Measured, interleaved in a shuffled order per round:

- the batch with small images (the emulator's real ~10 kB PNGs): the process's floor;
- the batch with 8 MB images, as configured (`PART_SIZE` in adapters/storage/s3.py, at most
  `MAX_UPLOADS` images stored at once in services/generation.py);
- the same with those constants set otherwise (`--variants`), through a wrapper that changes
  the module constants before the CLI runs: what the part size and the upload limit cost.

Target: peak RSS <= 200 MB with 8 MB images and N = 16, as configured.
"""

from __future__ import annotations

import argparse
import random
import statistics
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
    machine,
    run_measured,
    verdict,
)

from imagen4ctl.adapters import storage
from imagen4ctl.durations import parse_size

TARGET_MB = 200.0
MIB = 1024 * 1024

WITH_CONSTANTS = """\
import sys

import imagen4ctl.adapters.storage.s3 as storage
import imagen4ctl.services.generation as generation
from imagen4ctl.cli import main

storage.PART_SIZE = int(sys.argv.pop(1))
generation.MAX_UPLOADS = int(sys.argv.pop(1))
sys.argv[0] = "imagen4ctl"
main()
"""


def parse_variant(text: str) -> tuple[int, int]:
    """`uploads=16,part=5` -> (part size in bytes, upload limit); unset ones as configured."""
    from imagen4ctl.services import generation

    values = dict(item.split("=") for item in text.split(",") if item)
    part = int(float(values.get("part", storage.PART_SIZE / MIB)) * MIB)
    return part, int(values.get("uploads", generation.MAX_UPLOADS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", default="8MB")
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--variants", default="uploads=16;uploads=16,part=5;uploads=4",
                        help="other settings to try: PART_SIZE in MiB, MAX_UPLOADS")
    args = parser.parse_args()
    image_size = parse_size(args.image_size)
    configured = parse_variant("")
    variants: dict[str, tuple[int, int] | None] = {
        "small images (floor)": None, f"{args.image_size} images, as configured": configured}
    for text in args.variants.split(";"):
        part, uploads = parse_variant(text)
        variants[f"{args.image_size}, PART_SIZE {part / MIB:g} MiB, MAX_UPLOADS {uploads}"] = \
            (part, uploads)
    samples = {label: Samples(label) for label in variants}
    times: dict[str, list[float]] = {label: [] for label in variants}

    from tests.plugins.s3 import SeaweedServer

    with tempfile.TemporaryDirectory(prefix="imagen4ctl-memory-") as tmp, \
            fal_emulator(args.latency) as emulator:
        folder = Path(tmp)
        work = folder / "work"
        work.mkdir()
        wrapper = folder / "with_constants.py"
        wrapper.write_text(WITH_CONSTANTS)
        prompts = folder / "prompts.txt"
        prompts.write_text("".join(f"memory prompt {i}\n" for i in range(args.prompts)))
        server = SeaweedServer(folder / "seaweedfs")
        server.start()
        try:
            env = bench_env(**emulator.env(), FAL_KEY=KEY, HOME=str(work),
                            MINIO_ENDPOINT=server.endpoint, MINIO_ACCESS_KEY=server.access_key,
                            MINIO_SECRET_KEY=server.secret_key, PYTHONPATH=str(ROOT))
            entry = str(Path(sys.executable).parent / "imagen4ctl")
            labels = list(variants)
            for number in range(args.rounds * len(labels)):
                if number % len(labels) == 0:
                    random.shuffle(labels)
                label = labels[number % len(labels)]
                constants = variants[label]
                emulator.reset()
                emulator.faults = None if constants is None else f"file=large:{image_size}"
                bucket = f"memory-{number}"
                server.admin_client().make_bucket(bucket)
                run_env = {**env, "MINIO_BUCKET": bucket,
                           "DATABASE_URL": f"sqlite:///{folder / f'run{number}.db'}"}
                run_measured([entry, "db", "upgrade"], env=run_env, cwd=work)
                command = ([entry] if constants in (None, configured)
                           else [sys.executable, str(wrapper), *map(str, constants or ())])
                run = run_measured(
                    [*command, "generate", "--from-file", str(prompts), "--concurrency",
                     str(args.concurrency), "--user-id", "m", "--json"], env=run_env, cwd=work)
                stored = list(server.admin_client().list_objects(bucket, recursive=True))
                sizes = {obj.size for obj in stored}
                want = image_size if constants is not None else None
                if len(stored) != args.prompts or (want is not None and sizes != {want}):
                    raise BenchError(f"{label}: stored {len(stored)} objects of sizes {sizes}")
                samples[label].values.append(run.peak_rss_mb)
                times[label].append(run.seconds)
                print(f"  {label:<46} peak RSS {run.peak_rss_mb:6.1f} MB in "
                      f"{run.seconds:5.1f} s", flush=True)
        finally:
            server.stop()

    print(f"\nP3 memory — {machine()}")
    print(f"{args.prompts} prompts, --concurrency {args.concurrency}, SeaweedFS bucket, as "
          f"configured PART_SIZE {configured[0] / MIB:g} MiB and MAX_UPLOADS {configured[1]}, "
          f"{args.rounds} rounds\n")
    print(f"{'peak RSS of the batch process':<54} {'median MB':>10} {'min':>8} {'max':>8}"
          f" {'median s':>9}")
    for s in samples.values():
        print(f"{s.label:<54} {s.median:>10.1f} {min(s.values):>8.1f} {max(s.values):>8.1f}"
              f" {statistics.median(times[s.label]):>9.1f}")
    floor = samples["small images (floor)"].median
    ours = samples[f"{args.image_size} images, as configured"].median
    print(f"\npeak with {args.image_size} images: {ours:.1f} MB (target <= {TARGET_MB:g} MB): "
          f"{verdict(ours <= TARGET_MB)}")
    print(f"above the small-image floor ({floor:.1f} MB): {ours - floor:.1f} MB = "
          f"{(ours - floor) / min(args.concurrency, configured[1]):.1f} MB per upload in "
          f"flight (at most {min(args.concurrency, configured[1])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
