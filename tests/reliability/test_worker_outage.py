"""A running worker outlives an S3 outage: `/healthz` turns 503 while the bucket is down and
200 once it is back, and no row is FAILED because of it. (The S3 server is the test's own;
the PostgreSQL server is shared with the rest of the suite, so it is not the one stopped.)"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability._workers import (
    KEY,
    finished,
    free_port,
    migrated_schema,
    outputs,
    queue_rows,
    spawn,
    sql,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.slow

ROWS = 12
OUTAGE = 4.0  # seconds the bucket stays down once the worker has seen it


def healthz(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_an_s3_outage_is_waited_out(pg_database: str, s3_server_private: Any,
                                    fal_emulator: Any, tmp_path: Path) -> None:
    db = migrated_schema(pg_database, "outage")
    s3 = s3_server_private
    bucket = f"outage-{uuid.uuid4().hex[:12]}"
    s3.admin_client().make_bucket(bucket)
    env = {"DATABASE_URL": db, "FAL_KEY": KEY, "FAL_MAX_CONCURRENT": "2",
           "MINIO_ENDPOINT": s3.endpoint, "MINIO_ACCESS_KEY": s3.access_key,
           "MINIO_SECRET_KEY": s3.secret_key, "MINIO_BUCKET": bucket}
    fal_emulator.latency = 0.5
    port = free_port()
    worker = spawn(env, tmp_path, "worker", "--concurrency", "2", "--metrics-port", str(port))
    try:
        wait_until(lambda: healthz(port) == 200, 30, "/healthz 200 at start", [worker])
        queue_rows(db, ROWS, "outage")
        wait_until(lambda: finished(db) >= 2, 30, "the first rows completed", [worker])

        s3.stop(grace=0)
        down_at = time.monotonic()
        wait_until(lambda: healthz(port) == 503, 60, "/healthz 503 with the bucket down",
                   [worker])
        reason = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
        assert worker.process.poll() is None, outputs([worker])
        assert statuses(db).get("FAILED", 0) == 0, outputs([worker])

        back_at = datetime.now(UTC)
        s3.start()
        wait_until(lambda: healthz(port) == 200, 90, "/healthz 200 with the bucket back",
                   [worker])
        wait_until(lambda: finished(db) == ROWS, 90, "every row finished", [worker])
        assert worker.stop() < 30 and worker.process.returncode == 0, outputs([worker])
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(timeout=10)
    assert statuses(db) == {"COMPLETED": ROWS}, outputs([worker])
    assert "storage" in reason.lower() or "s3" in reason.lower() or "bucket" in reason.lower(), \
        reason
    assert fal_emulator.log.prompts_queued_twice(prompt_contains="outage row") == {}
    # The outage met paid work: fal finished a request while the bucket was down, and its
    # row was completed (its images stored) only once the bucket was back.
    ended = {life.prompt: life.ended_at for life in fal_emulator.log.lifetimes("outage row")}
    waited = [prompt for prompt, completed_at in sql(
        db, "SELECT prompt, completed_at FROM generations")
        if (end := ended.get(prompt)) is not None and end < back_at < completed_at]
    assert waited, outputs([worker])
