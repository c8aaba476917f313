"""`imagen4ctl worker --webhook-url --webhook-port` as a real process: its rows end through fal's
signed deliveries without one status call, and when every delivery is lost or forged, they
still end, followed as without webhooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.webhooks import JWKS_PATH
from tests.conftest import CliResult
from tests.reliability._workers import (
    KEY,
    Worker,
    finished,
    free_port,
    queue_rows,
    spawn,
    sql,
    statuses,
    wait_until,
)

ROWS = 6


@pytest.fixture
def run_worker(migrated_db: str, fal_emulator: FalEmulator,
               tmp_path: Path) -> Iterator[Callable[..., tuple[Worker, int]]]:
    fal_emulator.latency = 0.5
    started: list[Worker] = []

    def run(*args: str, path: str = "/fal/webhook") -> tuple[Worker, int]:
        port = free_port()
        env = {"DATABASE_URL": migrated_db, "FAL_KEY": KEY, "FAL_MAX_CONCURRENT": "4",
               "IMAGES_DIR": str(tmp_path / "images"),
               "FAL_WEBHOOK_JWKS_URL": fal_emulator.base_url + JWKS_PATH}
        args = tuple(arg.format(port=port) for arg in args)
        worker = spawn(env, tmp_path, f"worker-{len(started)}", "--concurrency", "4",
                       "--webhook-url", f"http://127.0.0.1:{port}{path}",
                       "--webhook-port", str(port), *args)
        started.append(worker)
        return worker, port

    yield run
    for worker in started:
        if worker.process.poll() is None:
            worker.stop()


def test_rows_end_through_fals_deliveries_without_a_status_call(
        run_worker: Callable[..., tuple[Worker, int]], migrated_db: str,
        fal_emulator: FalEmulator) -> None:
    worker, _ = run_worker()
    queue_rows(migrated_db, ROWS, "told")
    wait_until(lambda: finished(migrated_db) == ROWS, 60, "every row finished", [worker])
    assert statuses(migrated_db) == {"COMPLETED": ROWS}, worker.output()
    requests = [request_id for (request_id,) in sql(
        migrated_db, "SELECT fal_request_id FROM generations")]
    for request_id in requests:  # fal was asked nothing about them: it told
        assert [e.kind for e in fal_emulator.log.for_request(request_id)] == ["submit", "file"]
    assert {a.status for a in fal_emulator.webhooks.attempts()} == {200}
    assert worker.stop() < 30 and worker.process.returncode == 0, worker.output()


def test_one_port_serves_metrics_and_deliveries(run_worker: Callable[..., tuple[Worker, int]],
                                                migrated_db: str,
                                                fal_emulator: FalEmulator) -> None:
    worker, port = run_worker("--metrics-port", "{port}", path="/hooks/fal")
    wait_until(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, 30, "/healthz",
               [worker])
    queue_rows(migrated_db, 2, "shared")
    wait_until(lambda: finished(migrated_db) == 2, 60, "both rows finished", [worker])
    assert {a.status for a in fal_emulator.webhooks.attempts()} == {200}
    assert {a.url for a in fal_emulator.webhooks.attempts()} == {
        f"http://127.0.0.1:{port}/hooks/fal"}
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert 'imagen4ctl_worker_webhook_deliveries_total{answer="200"} 2' in metrics.text


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("fault", ["drop", "forge"])
def test_lost_or_forged_deliveries_cost_time_never_a_row(
        run_worker: Callable[..., tuple[Worker, int]], migrated_db: str,
        fal_emulator: FalEmulator, fault: str) -> None:
    if fault == "drop":
        fal_emulator.webhooks.drop = True
    else:
        fal_emulator.webhooks.forge = "signature"
    worker, _ = run_worker("--webhook-grace", "0.5")
    queue_rows(migrated_db, ROWS, fault)
    wait_until(lambda: finished(migrated_db) == ROWS, 60, "every row finished", [worker])
    assert statuses(migrated_db) == {"COMPLETED": ROWS}, worker.output()
    attempts = fal_emulator.webhooks.attempts()
    assert attempts and all(a.dropped if fault == "drop" else a.status == 401
                            for a in attempts)
    assert worker.stop() < 30 and worker.process.returncode == 0
    output = worker.output(200)
    assert "Traceback" not in output
    if fault == "forge":
        assert "webhook delivery refused (401)" in output


def test_the_webhook_options_go_together(cli: Callable[..., CliResult]) -> None:
    result = cli("worker", "--webhook-url", "https://worker.example/fal")
    assert result.exit_code == 2
    assert "error: --webhook-url and --webhook-port go together" in result.stderr
    result = cli("worker", "--webhook-url", "worker.example/fal", "--webhook-port", "9000")
    assert result.exit_code == 2
    assert "error: --webhook-url must be an http(s) URL" in result.stderr
