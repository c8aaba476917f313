"""The worker's own state: SQLite's one-worker lock, the backoff, what /healthz says, and
its log lines (their use in the loop: services/test_worker.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imagen4ctl.errors import UsageError
from imagen4ctl.services.worker_state import (
    ONE_SQLITE_WORKER,
    Backoff,
    Health,
    WorkerEvent,
    one_sqlite_worker,
)


def test_sqlite_serves_one_worker(tmp_path: Path) -> None:
    database = tmp_path / "one.db"
    with one_sqlite_worker(database):
        with pytest.raises(UsageError, match=f"^{ONE_SQLITE_WORKER}$"):
            with one_sqlite_worker(database):
                pass
    with one_sqlite_worker(database):  # released when the first one ended
        pass


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    high = Backoff(base=1.0, cap=60.0, rng=lambda: 1.0)
    assert [high.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    low = Backoff(base=1.0, cap=60.0, rng=lambda: 0.0)
    assert [low.next() for _ in range(3)] == [0.5, 1, 2]
    low.reset()
    assert low.next() == 0.5


def test_health_says_why_it_is_unhealthy() -> None:
    health = Health(stall_after=120)
    assert health.verdict() == (False, "starting\n")
    health.started = True
    assert health.verdict() == (True, "ok\n")
    assert health.down("storage", "the bucket\n is gone")
    assert not health.down("storage", "still gone")
    assert health.verdict() == (False, "storage: still gone\n")
    assert health.up("storage") and not health.up("storage")
    health.turned -= 500
    assert health.verdict()[1].startswith("stalled")


def test_a_state_change_is_one_line_plain_or_json() -> None:
    event = WorkerEvent("submitted", id=12, user_id="42", fal_request_id="req-1",
                        from_status="PENDING", to_status="PROCESSING", seconds=0.25,
                        at=datetime(2026, 12, 5, 10, 0, tzinfo=UTC))
    assert event.plain() == ("2026-12-05T10:00:00Z row 12 user 42 request req-1 "
                             "PENDING → PROCESSING 0.2s: submitted")
    data = json.loads(json.dumps(event.to_json()))
    assert data == {"at": "2026-12-05T10:00:00Z", "level": "info", "event": "state",
                    "message": "submitted", "id": 12, "user_id": "42",
                    "fal_request_id": "req-1", "from": "PENDING", "to": "PROCESSING",
                    "seconds": 0.25}
    news = WorkerEvent("storage is down, waiting for it", reason="bucket gone",
                       level="warning", at=datetime(2026, 12, 5, 10, 0, tzinfo=UTC))
    assert news.plain() == ("2026-12-05T10:00:00Z WARNING storage is down, waiting for it "
                            "(bucket gone)")
    assert news.to_json()["event"] == "worker"
