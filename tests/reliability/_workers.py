"""`imagen4ctl worker` as real processes on a schema of the test run's PostgreSQL database:
spawn them, watch the table, stop them. Shared by the fleet and the outage tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagen4ctl.endpoints import ENDPOINTS
from tests.factories import bot_row, insert_rows, sql

KEY = "emulator-key-0001"


@dataclass
class Worker:
    """One `imagen4ctl worker` process; its output goes to a file (a pipe could fill up)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return f"--- {self.name} (pid {self.pid}, exit {self.process.poll()}):\n" + "\n".join(
            text.splitlines()[-lines:])

    def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 30.0) -> float:
        """Send `sig`, wait for the exit; the seconds it took."""
        sent = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"{self.name} still ran {within:g}s after {sig.name}:\n"
                                 f"{self.output()}") from None
        return time.monotonic() - sent


def spawn(env: dict[str, str], folder: Path, name: str, *args: str) -> Worker:
    log_path = folder / f"{name}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "imagen4ctl", "worker", *args],
                                   env={**os.environ, **env}, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Worker(name, process, log_path)


def outputs(workers: list[Worker]) -> str:
    return "\n".join(worker.output() for worker in workers)


def migrated_schema(pg_database: str, prefix: str) -> str:
    """A new schema of the run's PostgreSQL database, upgraded: its URL, for real processes."""
    from imagen4ctl.db.migrate import upgrade
    from imagen4ctl.db.session import Database

    schema = f"{prefix}_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    sql(pg_database, f"CREATE SCHEMA {schema}")
    url = f"{pg_database}?options=-csearch_path%3D{schema}"
    database = Database(url)
    upgrade(database)
    database.dispose()
    return url


def queue_rows(db: str, count: int, tag: str, *, user: str = "7") -> list[str]:
    """`count` rows as the bot now writes them (PENDING, nothing else), the three Imagen 4
    endpoints in turn; their prompts, each unique."""
    endpoints = sorted(ENDPOINTS)
    prompts = [f"{tag} row {n:04d}" for n in range(count)]
    insert_rows(db, [bot_row(user, "imagen4", "PENDING", prompt=prompt,
                             fal_endpoint=endpoints[n % len(endpoints)])
                     for n, prompt in enumerate(prompts)])
    return prompts


def statuses(db: str) -> dict[str, int]:
    return dict(sql(db, "SELECT status, count(*) FROM generations GROUP BY status"))


def finished(db: str) -> int:
    return int(sql(db, "SELECT count(*) FROM generations WHERE status IN "
                       "('COMPLETED', 'FAILED')")[0][0])


def wait_until(condition: Callable[[], Any], within: float, what: str,
               workers: list[Worker] | None = None, every: float = 0.1) -> Any:
    """Poll `condition` until it is truthy; fail with the workers' output otherwise."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g}s\n{outputs(workers or [])}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
