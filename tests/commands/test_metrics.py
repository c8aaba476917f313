"""`imagen4ctl metrics`: the exposition parsed by prometheus_client, values from real databases."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imagen4ctl import __version__
from tests.conftest import CANARY, CliResult, assert_no_secret, interruptible
from tests.factories import bot_row, incident_rows, insert_rows

Cli = Callable[..., CliResult]
Labels = frozenset[tuple[str, str]]

FAMILIES = {
    "imagen4ctl_generations": "gauge",
    "imagen4ctl_generations_stuck": "gauge",
    "imagen4ctl_generations_stuck_oldest_age_seconds": "gauge",
    "imagen4ctl_generation_success_ratio": "gauge",
    "imagen4ctl_generation_success_samples": "gauge",
    "imagen4ctl_generation_latency_seconds": "summary",
    "imagen4ctl_check_ok": "gauge",
    "imagen4ctl_info": "gauge",
}


def parse(text: str) -> dict[str, dict[tuple[str, Labels], float]]:
    """{family: {(sample name, labels): value}}, checking HELP and TYPE on the way."""
    families: dict[str, dict[tuple[str, Labels], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        assert family.name not in families, f"{family.name} twice"
        if family.name in FAMILIES:
            assert family.type == FAMILIES[family.name], family.name
        families[family.name] = {(s.name, frozenset(s.labels.items())): s.value
                                 for s in family.samples}
    help_lines = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    type_lines = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert help_lines == type_lines == set(families)
    return families


def value(families: dict[str, dict[tuple[str, Labels], float]], name: str,
          sample: str | None = None, **labels: str) -> float:
    return families[name][(sample or name, frozenset(labels.items()))]


def scrape(cli: Cli, env: dict[str, str]) -> dict[str, dict[tuple[str, Labels], float]]:
    result = cli("metrics", env=env)
    assert result.exit_code == 0, result.output
    assert_no_secret(result.stdout)
    return parse(result.stdout)


def test_incident_with_only_fal_api_key(cli: Cli, migrated_db: str, fal_emulator: Any) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    m = scrape(cli, {"DATABASE_URL": migrated_db, "FAL_API_KEY": CANARY})
    assert set(m) == set(FAMILIES)
    assert m["imagen4ctl_generations"] == {
        ("imagen4ctl_generations", frozenset({("kind", kind), ("status", status)})): count
        for kind, counts in {"avatar": {"COMPLETED": 137.0}, "imagen4": {"PENDING": 5.0}}.items()
        for status, count in {"PENDING": 0.0, "PROCESSING": 0.0, "COMPLETED": 0.0,
                              "FAILED": 0.0, **counts}.items()
    }
    assert value(m, "imagen4ctl_generations_stuck") == 5
    assert 119045 <= value(m, "imagen4ctl_generations_stuck_oldest_age_seconds") < 119045 + 60
    # Created in the last hour: one stuck row; in the last day: four. None completed.
    assert value(m, "imagen4ctl_generation_success_ratio", window="1h") == 0
    assert value(m, "imagen4ctl_generation_success_samples", window="1h") == 1
    assert value(m, "imagen4ctl_generation_success_ratio", window="24h") == 0
    assert value(m, "imagen4ctl_generation_success_samples", window="24h") == 4
    latency = "imagen4ctl_generation_latency_seconds"
    assert value(m, latency, f"{latency}_count") == 0  # the bot records no submitted_at
    assert math.isnan(value(m, latency, quantile="0.5"))
    for check in ("database", "schema", "storage", "fal_api"):
        assert value(m, "imagen4ctl_check_ok", check=check) == 1, check
    assert value(m, "imagen4ctl_info", version=__version__, model="fal-ai/imagen4/preview",
                 storage="local", fal_key_source="FAL_API_KEY") == 1


def test_fixed_rows_drop_to_zero(cli: Cli, migrated_db: str, fal_emulator: Any) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    env = {"DATABASE_URL": migrated_db, "FAL_KEY": "k-123456"}
    from sqlalchemy import create_engine, text

    from imagen4ctl.db.session import parse_database_url

    engine = create_engine(parse_database_url(migrated_db))
    with engine.begin() as connection:
        connection.execute(text("UPDATE generations SET status = 'COMPLETED'"))
    engine.dispose()
    m = scrape(cli, env)
    assert value(m, "imagen4ctl_generations", kind="imagen4", status="PENDING") == 0
    assert value(m, "imagen4ctl_generations", kind="imagen4", status="COMPLETED") == 5
    assert value(m, "imagen4ctl_generations_stuck") == 0
    assert value(m, "imagen4ctl_generations_stuck_oldest_age_seconds") == 0
    assert value(m, "imagen4ctl_generation_success_ratio", window="1h") == 1
    assert value(m, "imagen4ctl_info", version=__version__, model="fal-ai/imagen4/preview",
                 storage="local", fal_key_source="FAL_KEY") == 1


def test_latency_quantiles(cli: Cli, migrated_db: str, fal_emulator: Any) -> None:
    now = datetime.now(UTC)
    done = now - timedelta(minutes=10)

    def timed(seconds: float, completed: datetime = done, status: str = "COMPLETED"
              ) -> dict[str, Any]:
        return bot_row("1", "imagen4", status, age=now - completed + timedelta(seconds=seconds),
                       submitted_at=completed - timedelta(seconds=seconds),
                       completed_at=completed)

    rows = [timed(s) for s in range(100, 0, -1)]  # 1..100 s, inserted out of order
    rows.append(timed(1000, completed=now - timedelta(days=2)))  # in _sum/_count only
    rows.append(timed(5000, status="FAILED"))  # not a completion
    rows.append(bot_row("1", "imagen4", "COMPLETED"))  # the bot's row: no timestamps
    insert_rows(migrated_db, rows)
    m = scrape(cli, {"DATABASE_URL": migrated_db, "FAL_KEY": "k-123456"})
    name = "imagen4ctl_generation_latency_seconds"
    # percentile_cont: linear interpolation between the ranks around q * (n - 1).
    assert value(m, name, quantile="0.5") == pytest.approx(50.5, abs=1e-3)
    assert value(m, name, quantile="0.9") == pytest.approx(90.1, abs=1e-3)
    assert value(m, name, quantile="0.99") == pytest.approx(99.01, abs=1e-3)
    assert value(m, name, f"{name}_count") == 101
    assert value(m, name, f"{name}_sum") == pytest.approx(5050 + 1000, abs=1e-2)


def test_label_values_fold_and_escape(cli: Cli, migrated_db: str, fal_emulator: Any) -> None:
    weird = 'we"ird\\kind\nnewline'
    rows = [bot_row("1", f"kind{n:02d}", "COMPLETED") for n in range(30) for _ in range(n + 1)]
    rows += [bot_row("1", weird, "COMPLETED") for _ in range(40)]  # the largest kind
    rows += [bot_row("1", "imagen4", f"STATE{n:02d}") for n in range(15) for _ in range(n + 1)]
    insert_rows(migrated_db, rows)
    m = scrape(cli, {"DATABASE_URL": migrated_db, "FAL_KEY": "k-123456"})
    samples = m["imagen4ctl_generations"]
    kinds = {dict(labels)["kind"] for _, labels in samples}
    statuses = {dict(labels)["status"] for _, labels in samples}
    assert weird in kinds
    assert len(kinds) == 21 and "other" in kinds  # 20 kinds, then everything else
    assert {f"kind{n:02d}" for n in range(12, 30)} < kinds  # the largest stay themselves
    assert "kind00" not in kinds
    assert len(statuses) == 4 + 10 + 1
    assert {f"STATE{n:02d}" for n in range(5, 15)} < statuses
    assert sum(samples.values()) == len(rows)
    # imagen4 (120 rows) and the weird kind (40) come first, then kind29..kind12.
    assert value(m, "imagen4ctl_generations", kind="other", status="COMPLETED") == sum(
        range(1, 13))  # kind00..kind11
    assert value(m, "imagen4ctl_generations", kind="imagen4", status="other") == sum(
        range(1, 6))  # STATE00..STATE04


def test_database_down_keeps_checks_and_info(cli: Cli, fal_emulator: Any) -> None:
    result = cli("metrics", "--timeout", "2",
                 env={"DATABASE_URL": f"postgresql://x:{CANARY}@127.0.0.1:1/db",
                      "FAL_KEY": CANARY, "MINIO_ENDPOINT": "127.0.0.1:1",
                      "MINIO_ACCESS_KEY": "ak", "MINIO_SECRET_KEY": CANARY + "s"})
    assert result.exit_code == 0, result.output
    assert_no_secret(result.output)
    m = parse(result.stdout)
    assert set(m) == {"imagen4ctl_check_ok", "imagen4ctl_info"}
    assert {dict(labels)["check"]: v for (_, labels), v in m["imagen4ctl_check_ok"].items()} == {
        "database": 0, "schema": 0, "storage": 0, "fal_api": 1}
    assert value(m, "imagen4ctl_info", version=__version__, model="fal-ai/imagen4/preview",
                 storage="s3", fal_key_source="FAL_KEY") == 1


def test_checks_against_s3_and_fal(
    cli: Cli, migrated_db: str, s3_bucket: Any, s3_env: dict[str, str], fal_emulator: Any
) -> None:
    admin = s3_bucket.server.admin_client()

    def listing() -> list[tuple[str, bool]]:
        return sorted((o.object_name, o.is_dir) for prefix in ("", "generations/")
                      for o in admin.list_objects(s3_bucket.name, prefix=prefix))

    env = {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": "k-123456"}
    m = scrape(cli, env)
    assert value(m, "imagen4ctl_check_ok", check="storage") == 1
    assert value(m, "imagen4ctl_check_ok", check="fal_api") == 1
    assert listing() == []  # a scrape writes nothing
    fal_emulator.accepted_keys = {"other"}
    m = scrape(cli, {**env, "MINIO_SECRET_KEY": CANARY})
    assert value(m, "imagen4ctl_check_ok", check="storage") == 0
    assert value(m, "imagen4ctl_check_ok", check="fal_api") == 0
    assert value(m, "imagen4ctl_check_ok", check="database") == 1


def test_serve_answers_fresh_values_and_stops_cleanly(migrated_db: str,
                                                      fal_emulator: Any) -> None:
    env = {**os.environ, "DATABASE_URL": migrated_db, "FAL_KEY": CANARY}
    for sig in (signal.SIGINT, signal.SIGTERM):
        process = subprocess.Popen(
            [sys.executable, "-m", "imagen4ctl", "metrics", "--serve", "0"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert line.startswith("serving metrics at http://127.0.0.1:"), line
            url = line.split()[3]
            first = httpx.get(url, timeout=10)
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
            stuck = value(parse(first.text), "imagen4ctl_generations_stuck")
            insert_rows(migrated_db, [bot_row("1", "imagen4", "PENDING",
                                              age=timedelta(hours=1))])
            second = parse(httpx.get(url, timeout=10).text)
            assert value(second, "imagen4ctl_generations_stuck") == stuck + 1
            assert_no_secret(first.text)
            assert httpx.get(url.replace("/metrics", "/nope"), timeout=5).status_code == 404
            process.send_signal(sig)
            stdout, stderr = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr and stdout == ""
        assert_no_secret(stderr)


def test_serve_port_in_use_is_one_line(cli: Cli, migrated_db: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("metrics", "--serve", str(port), env={"DATABASE_URL": migrated_db})
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}:")
    assert "Traceback" not in result.output


def test_help(cli: Cli) -> None:
    result = cli("metrics", "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and "--serve" in result.stdout
