"""What the performance benchmarks (startup, batch, memory, scan) share.

Timed subprocesses with their own peak RSS (from `wait4`, so only that child counts), medians,
an environment without the developer's own settings, and the emulator / S3 servers started in
this process. Each benchmark is one script run as `python bench/NAME.py`; this module sits next
to it and is imported as `_perf`.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imagen4ctl.emulator import FalEmulator

from _common import ROOT, SAMPLES_HEADER, BenchError, Samples, clean_env  # noqa: E402, F401

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `tests.plugins.s3` can be imported from a bench

from imagen4ctl.settings import VARIABLES  # noqa: E402

# Everything a developer's shell or .env could set that changes what is measured.
OWN_VARIABLES = tuple(v.name for v in VARIABLES)
KEY = "bench-key-0001"

# Imports imagen4ctl from the trees in argv[1] (os.pathsep-separated), not through the
# editable install's finder, then runs the CLI with the remaining arguments: how ab.py and
# batch.py --rev run another revision.
LAUNCHER = """
import os, sys
trees = sys.argv.pop(1).split(os.pathsep)
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
sys.path[0:0] = trees
sys.argv[0] = "imagen4ctl"
from imagen4ctl.cli import main
main()
"""


def bench_env(**extra: str) -> dict[str, str]:
    """This process's environment without imagen4ctl's variables, plus `extra`."""
    return clean_env(OWN_VARIABLES, **extra)


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_mb: float
    stdout: str
    returncode: int


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path,
                 ok_codes: Sequence[int] = (0,)) -> Run:
    """Wall time and peak RSS of one subprocess (its own, not the max of all children)."""
    out_path = cwd / f".bench-out-{os.getpid()}-{time.monotonic_ns()}"
    with open(out_path, "w+b") as out, open(out_path.with_suffix(".err"), "w+b") as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    out_path.unlink(missing_ok=True)
    out_path.with_suffix(".err").unlink(missing_ok=True)
    if process.returncode not in ok_codes:
        tail = (stderr or stdout).strip().splitlines()[-6:]
        raise BenchError(f"`{' '.join(cmd)[:120]}` exited {process.returncode}: "
                         + " | ".join(tail))
    return Run(seconds, usage.ru_maxrss / 1024, stdout, process.returncode)


def header(unit: str = "ms") -> str:
    return SAMPLES_HEADER


def machine() -> str:
    """Date, host and what the numbers were measured on, for the report."""
    try:
        model = next(line.split(":", 1)[1].strip()
                     for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} "
            f"cores ({model}), Python {platform.python_version()}, {platform.system()} "
            f"{platform.release()}")


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def fal_emulator(latency: float, queue_fraction: float = 0.3, *,
                 nagle: bool = False) -> FalEmulator:
    """The fal emulator for a benchmark (not started).

    The emulator sets TCP_NODELAY on its sockets (headers and body are separate TLS records,
    and with Nagle's algorithm the body waits ~40 ms for the client's delayed ACK, which real
    fal does not cost). `nagle=True` turns Nagle back on, to measure what that cost.
    """
    from imagen4ctl.emulator import FalEmulator, server

    server._Handler.disable_nagle_algorithm = not nagle
    return FalEmulator(latency=latency, queue_fraction=queue_fraction)
