"""`imagen4ctl worker`: the command as an operator runs it — in-process for --once and bad
input, as a real process where a signal or a second worker is involved."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagen4ctl.emulator import FalEmulator
from imagen4ctl.services.worker import HANDED_BACK
from tests.conftest import CANARY, CliResult, assert_no_secret, interruptible
from tests.factories import bot_row, insert_rows, sql
from tests.reliability._workers import free_port, migrated_schema

Cli = Callable[..., CliResult]


def rows(db_url: str) -> list[Any]:
    return sql(db_url, "SELECT id, status, fal_request_id, submit_started_at, error, "
                       "claimed_by FROM generations ORDER BY id")


@pytest.fixture
def env(migrated_db: str, tmp_path: Path, fal_emulator: FalEmulator) -> dict[str, str]:
    return {"DATABASE_URL": migrated_db, "FAL_KEY": CANARY,
            "IMAGES_DIR": str(tmp_path / "images")}


# --- --once, in-process ---


def test_once_completes_a_queued_row_with_json_log_lines(cli: Cli, env: dict[str, str],
                                                         fal_emulator: FalEmulator) -> None:
    insert_rows(env["DATABASE_URL"], [bot_row("42", "imagen4", "PENDING", prompt="cron cat")])
    result = cli("worker", "--once", "--json-logs", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    changes = [(line["from"], line["to"]) for line in lines if line["event"] == "state"]
    assert changes == [("PENDING", "PROCESSING"), ("PROCESSING", "COMPLETED")]
    done = next(line for line in lines if line.get("to") == "COMPLETED")
    [(row_id, status, request_id, *_rest, claimed_by)] = rows(env["DATABASE_URL"])
    assert (status, claimed_by) == ("COMPLETED", None)
    assert done["id"] == row_id and done["user_id"] == "42"
    assert done["fal_request_id"] == request_id and done["seconds"] >= 0
    assert lines[0]["message"].startswith("started") and lines[-1]["message"] == "stopped"
    assert_no_secret(result.output)
    assert fal_emulator.log.queued_count("cron cat") == 1


def test_once_plain_lines_say_row_user_request_and_change(cli: Cli, env: dict[str, str]
                                                          ) -> None:
    insert_rows(env["DATABASE_URL"], [bot_row("7", "imagen4", "PENDING", prompt="plain")])
    result = cli("worker", "--once", env=env)
    assert result.exit_code == 0, result.output
    [(row_id, _, request_id, *_rest)] = rows(env["DATABASE_URL"])
    assert f"row {row_id} user 7 request {request_id} PROCESSING → COMPLETED" in result.stderr
    assert_no_secret(result.output)


def test_once_with_fal_refusing_the_key_exits_1_and_fails_no_row(
        cli: Cli, env: dict[str, str], fal_emulator: FalEmulator) -> None:
    fal_emulator.forbidden_keys = {CANARY}
    insert_rows(env["DATABASE_URL"], [bot_row("7", "imagen4", "PENDING", prompt="refused")])
    result = cli("worker", "--once", env=env)
    assert result.exit_code == 1, result.output
    assert "error: fal at" in result.stderr and "Traceback" not in result.output
    [(_, status, request_id, mark, error, claimed_by)] = rows(env["DATABASE_URL"])
    assert (status, request_id, mark, error, claimed_by) == ("PENDING", None, None, None, None)
    assert_no_secret(result.output)


def test_once_with_nothing_to_do_exits_0(cli: Cli, env: dict[str, str]) -> None:
    result = cli("worker", "--once", env=env)
    assert result.exit_code == 0, result.output


# --- bad input: one line, exit 2 or 1, nothing claimed ---


@pytest.mark.parametrize(("args", "extra", "code", "says"), [
    (["--concurrency", "0"], {}, 2, "--concurrency"),
    (["--grace", "-1"], {}, 2, "--grace"),
    (["--claim-timeout", "0"], {}, 2, "--claim-timeout"),
    (["--metrics-port", "70000"], {}, 2, "--metrics-port"),
    ([], {"FAL_MAX_CONCURRENT": "0"}, 2, "FAL_MAX_CONCURRENT"),
    ([], {"IMAGEN4_MODEL": "fal-ai/imagen4/preview/fsat"}, 2, "IMAGEN4_MODEL"),
    ([], {"FAL_KEY": ""}, 1, "no fal key"),
    ([], {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing"}, 1, "cannot connect"),
])
def test_bad_input_is_one_line_and_claims_nothing(
        cli: Cli, env: dict[str, str], fal_emulator: FalEmulator, args: list[str],
        extra: dict[str, str], code: int, says: str) -> None:
    insert_rows(env["DATABASE_URL"], [bot_row("7", "imagen4", "PENDING", prompt="untouched")])
    before = rows(env["DATABASE_URL"])
    result = cli("worker", *args, env={**env, **extra})
    assert result.exit_code == code, result.output
    assert says in result.output and "Traceback" not in result.output
    if code == 1:
        assert result.stderr.startswith("error: ") and result.stderr.count("error:") == 1
    assert rows(env["DATABASE_URL"]) == before
    assert fal_emulator.log.submission_count() == 0


def test_a_metrics_port_in_use_is_one_line(cli: Cli, env: dict[str, str],
                                           fal_emulator: FalEmulator) -> None:
    insert_rows(env["DATABASE_URL"], [bot_row("7", "imagen4", "PENDING", prompt="untouched")])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("worker", "--metrics-port", str(port), env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}:")
    assert "--metrics-port" in result.stderr
    assert rows(env["DATABASE_URL"])[0][1:] == ("PENDING", None, None, None, None)
    assert fal_emulator.log.submission_count() == 0


def test_help(cli: Cli) -> None:
    result = cli("worker", "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and "--claim-timeout" in result.stdout


# --- real processes: signals, a second worker, the HTTP endpoints ---


class Process:
    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "imagen4ctl", "worker", *args],
                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=interruptible)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], Any], within: float = 30.0) -> Any:
        ends = time.monotonic() + within
        while not (value := condition()):
            assert self.popen.poll() is None, self.output()
            assert time.monotonic() < ends, self.output()
            time.sleep(0.05)
        return value

    def signal(self, sig: signal.Signals, within: float = 30.0) -> float:
        sent = time.monotonic()
        self.popen.send_signal(sig)
        self.popen.wait(within)
        return time.monotonic() - sent


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(10)


def test_sqlite_serves_one_worker(cli: Cli, tmp_path: Path, fal_emulator: FalEmulator,
                                  processes: list[Process]) -> None:
    database = f"sqlite:///{tmp_path / 'one.db'}"
    env = {"DATABASE_URL": database, "FAL_KEY": CANARY, "IMAGES_DIR": str(tmp_path / "i")}
    assert cli("db", "upgrade", env=env).exit_code == 0
    first = Process(env, tmp_path / "first.log")
    processes.append(first)
    first.wait_for(lambda: "started" in first.output())
    result = cli("worker", "--once", env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[0] == \
        "error: SQLite serves one worker; use PostgreSQL for more"
    assert first.signal(signal.SIGTERM) < 10 and first.popen.returncode == 0


def test_sigterm_exits_0_within_grace_and_hands_rows_back(
        pg_database: str, tmp_path: Path, fal_emulator: FalEmulator,
        processes: list[Process]) -> None:
    url = migrated_schema(pg_database, "sigterm")
    fal_emulator.latency = 6.0
    insert_rows(url, [bot_row("7", "imagen4", "PENDING", prompt=f"slow {n}") for n in range(2)])
    env = {"DATABASE_URL": url, "FAL_KEY": CANARY, "IMAGES_DIR": str(tmp_path / "images"),
           "FAL_MAX_CONCURRENT": "2"}
    worker = Process(env, tmp_path / "worker.log", "--grace", "1")
    processes.append(worker)
    worker.wait_for(lambda: all(r[1] == "PROCESSING" for r in rows(url)))
    took = worker.signal(signal.SIGTERM)
    assert worker.popen.returncode == 0, worker.output()
    assert took < 1 + 3, worker.output()
    assert [(r[1], r[4], r[5]) for r in rows(url)] == [("PROCESSING", HANDED_BACK, None)] * 2
    assert "SIGTERM" in worker.output() and "2 rows handed back" in worker.output()

    # A second signal does not wait for the grace period.
    insert_rows(url, [bot_row("7", "imagen4", "PENDING", prompt="slow again")])
    again = Process(env, tmp_path / "again.log", "--grace", "60")
    processes.append(again)
    again.wait_for(lambda: rows(url)[-1][1] == "PROCESSING")
    again.popen.send_signal(signal.SIGINT)
    time.sleep(0.3)
    took = again.signal(signal.SIGINT)
    assert again.popen.returncode == 0 and took < 5, again.output()
    assert all(r[5] is None for r in rows(url))
    assert fal_emulator.log.prompts_queued_twice("slow") == {}


def test_healthz_and_metrics_answer_over_http(env: dict[str, str], tmp_path: Path,
                                              fal_emulator: FalEmulator,
                                              processes: list[Process]) -> None:
    port = free_port()
    worker = Process(env, tmp_path / "worker.log", "--metrics-port", str(port))
    processes.append(worker)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    worker.wait_for(healthy)
    assert httpx.get(f"{base}/healthz", timeout=2).text == "ok\n"
    insert_rows(env["DATABASE_URL"], [bot_row("7", "imagen4", "PENDING", prompt="scraped")])
    worker.wait_for(lambda: rows(env["DATABASE_URL"])[0][1] == "COMPLETED")
    scraped = httpx.get(f"{base}/metrics", timeout=20)
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    assert "imagen4ctl_generations" in families  # the families of `imagen4ctl metrics`
    completions = families["imagen4ctl_worker_completions"].samples[0].value
    assert completions == 1
    assert_no_secret(scraped.text)
    assert worker.signal(signal.SIGTERM) < 10 and worker.popen.returncode == 0
    assert_no_secret(worker.output())
