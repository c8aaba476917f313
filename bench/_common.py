"""What the benchmarks share: a scratch PostgreSQL database, timed subprocesses, medians.

Each benchmark is one script run as `python bench/NAME.py`; this module sits next to it and is
imported as `_common`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class BenchError(Exception):
    """A benchmark that cannot go on (a command failed, results disagree): one clear line."""


def database_url(dsn: str, name: str) -> str:
    """`dsn` pointed at database `name`, as a plain postgresql:// URL (libpq and imagen4ctl)."""
    url = make_url(dsn).set(drivername="postgresql", database=name)
    return url.render_as_string(hide_password=False)


class Pg:
    """A psycopg2 connection whose `execute` returns the rows (none for a statement without)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []


@contextmanager
def pg_connect(url: str, *, autocommit: bool = True) -> Iterator[Pg]:
    """psycopg2 on a postgresql:// URL; without autocommit, one transaction committed at the end."""
    import psycopg2

    connection = psycopg2.connect(database_url(url, make_url(url).database or "postgres"))
    connection.autocommit = autocommit
    try:
        yield Pg(connection)
        if not autocommit:
            connection.commit()
    finally:
        connection.close()


@contextmanager
def scratch_database(dsn: str, name: str, *, keep: bool = False) -> Iterator[str]:
    """A new, empty database for one run; dropped on the way out (error and Ctrl-C included)."""
    with pg_connect(dsn) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(dsn, name)
    finally:
        if keep:
            print(f"kept database {name} (--keep): DATABASE_URL={database_url(dsn, name)}")
        else:
            # FORCE: a subprocess killed by Ctrl-C may still hold a connection.
            with pg_connect(dsn) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def compile_package(tree: Path) -> None:
    """Compile `tree`/imagen4ctl to bytecode, as `pip install` does for an installed package.

    An editable checkout is compiled on first use instead, and not at all where
    PYTHONDONTWRITEBYTECODE is set (some shells here set it): each run would then compile
    imagen4ctl's modules from source, 60–85 ms before a batch's first submission.
    """
    import compileall

    compileall.compile_dir(str(tree / "imagen4ctl"), quiet=1)


def clean_env(variables: Sequence[str], **extra: str) -> dict[str, str]:
    """This process's environment without `variables`, plus `extra`, for imagen4ctl as
    installed: its bytecode is compiled first.

    Keeps a developer's own FAL_KEY, MINIO_* or .env out of what is measured.
    """
    compile_package(ROOT)
    env = {k: v for k, v in os.environ.items() if k not in variables}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Run:
    seconds: float
    stdout: str


def run_timed(cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> Run:
    """Wall time of one subprocess, start-up included; a failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(list(cmd), env=dict(env), cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchError(f"`{' '.join(cmd)}` exited {done.returncode}: " + " | ".join(tail))
    return Run(seconds, done.stdout)


@dataclass
class Samples:
    """Repeated measurements of one thing: seconds (shown in ms or s) or megabytes."""

    label: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def row(self, unit: str = "ms") -> str:
        show = {"ms": ms, "s": lambda v: f"{v:,.2f} s", "MB": lambda v: f"{v:,.1f} MB"}[unit]
        lo, hi = min(self.values), max(self.values)
        return (f"{self.label:<50} {show(self.median):>11} {show(lo):>11} {show(hi):>11}"
                f" {len(self.values):>4}")


SAMPLES_HEADER = f"{'measurement':<50} {'median':>11} {'min':>11} {'max':>11} {'n':>4}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def start_bucket(folder: Path, env: dict[str, str]) -> Any:
    """A SeaweedFS S3 server under `folder` with the bucket `bench`, its settings put in
    `env`; the caller stops it."""
    from tests.plugins.s3 import SeaweedServer

    server = SeaweedServer(folder / "seaweedfs")
    server.start()
    server.admin_client().make_bucket("bench")
    env.update(MINIO_ENDPOINT=server.endpoint, MINIO_ACCESS_KEY=server.access_key,
               MINIO_SECRET_KEY=server.secret_key, MINIO_BUCKET="bench")
    return server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
