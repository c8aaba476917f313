"""The emulator's request log on its own: keys appear only as short fingerprints; every queued
request's lifetime, and the most requests at fal at once (what the worker's cap is held to)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import fal_client
import pytest

from imagen4ctl.emulator import FalEmulator, fingerprint
from imagen4ctl.emulator.log import Lifetime, peak_in_flight
from tests.emulator._helpers import MODEL

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def life(name: str, queued: float, started: float | None, ended: float | None,
         prompt: str | None = None) -> Lifetime:
    def at(seconds: float | None) -> datetime | None:
        return None if seconds is None else T0 + timedelta(seconds=seconds)

    return Lifetime(request_id=name, endpoint_id=MODEL, prompt=prompt or name,
                    queued_at=T0 + timedelta(seconds=queued), started_at=at(started),
                    ended_at=at(ended))


def test_fingerprints_are_short_stable_and_keyless() -> None:
    key = "abc123:supersecret"
    assert fingerprint(key) == fingerprint(key) != fingerprint("abc123:supersecreT")
    assert len(fingerprint(key)) == 12
    assert "supersecret" not in fingerprint(key)


def test_the_peak_counts_queued_and_running_requests_together() -> None:
    lives = [life("a", 0, 1, 3), life("b", 0.5, 2, 4), life("c", 2.5, 3.5, 5)]
    peak = peak_in_flight(lives)
    assert (peak.count, peak.at, peak.request_ids) == (3, T0 + timedelta(seconds=2.5),
                                                       ("a", "b", "c"))
    assert peak_in_flight(lives, running_only=True).count == 2  # fal's count: b and c, or a and b


def test_a_slot_freed_and_taken_at_one_instant_is_no_overlap() -> None:
    assert peak_in_flight([life("a", 0, 0.3, 1), life("b", 1, 1.3, 2),
                           life("c", 2, 2.3, 3)]).count == 1
    assert peak_in_flight([]).count == 0


def test_a_request_that_never_ends_stays_in_flight() -> None:
    hanging, later = life("hang", 0, 0.1, None), life("late", 100, 100.1, 101)
    assert peak_in_flight([hanging, later]).count == 2
    assert hanging.in_flight_at(T0 + timedelta(days=1))


def test_a_request_cancelled_in_the_queue_never_ran() -> None:
    cancelled = life("c", 0, None, 0.5)
    assert peak_in_flight([cancelled, life("d", 0.2, 0.3, 1)]).count == 2
    assert peak_in_flight([cancelled, life("d", 0.2, 0.3, 1)], running_only=True).count == 1
    assert not cancelled.in_flight_at(T0 + timedelta(seconds=0.1), running_only=True)


def test_the_emulator_records_each_queued_request_with_its_times(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency, fal_emulator.queue_fraction = 0.2, 0.5
    before = datetime.now(UTC)
    handle = fal_sync_client.submit(MODEL, {"prompt": "timed"})
    handle.get(interval=0.02)
    [lifetime] = fal_emulator.log.lifetimes()
    assert lifetime.request_id == handle.request_id and lifetime.prompt == "timed"
    assert lifetime.endpoint_id == MODEL
    assert lifetime.started_at is not None and lifetime.ended_at is not None
    assert before <= lifetime.queued_at < lifetime.started_at < lifetime.ended_at
    queue_seconds = (lifetime.started_at - lifetime.queued_at).total_seconds()
    assert queue_seconds == pytest.approx(0.1, abs=0.001)
    assert lifetime.ended_at <= datetime.now(UTC)


def test_a_refused_submission_has_no_lifetime_and_a_lost_answer_has_one(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError):
        fal_sync_client.submit(MODEL, {"prompt": "refused [fault:submit=422]"})
    with pytest.raises(fal_client.client.FalClientHTTPError):
        fal_sync_client.submit(MODEL, {"prompt": "lost [fault:submit=queued:500]"})
    assert [life.prompt for life in fal_emulator.log.lifetimes()] == [
        "lost [fault:submit=queued:500]"]  # queued, and paid, though its answer was lost


def test_side_by_side_requests_overlap_and_one_after_the_other_do_not(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency = 0.15
    for n in range(3):  # each waits for the one before
        fal_sync_client.submit(MODEL, {"prompt": f"serial {n}"}).get(interval=0.02)
    assert fal_emulator.log.peak_in_flight(prompt_contains="serial").count == 1

    with ThreadPoolExecutor(4) as pool:
        handles = list(pool.map(lambda n: fal_sync_client.submit(
            MODEL, {"prompt": f"parallel {n}"}), range(4)))
    peak = fal_emulator.log.peak_in_flight(prompt_contains="parallel")
    assert peak.count == 4
    assert set(peak.request_ids) == {h.request_id for h in handles}
    assert fal_emulator.log.peak_in_flight().count == 4
    assert peak.at is not None and len(fal_emulator.log.in_flight_at(peak.at)) == 4


def test_a_cancel_ends_the_lifetime_early(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency = 5.0
    handle = fal_sync_client.submit(MODEL, {"prompt": "cancel me"})
    planned = fal_emulator.log.lifetimes()[0].ended_at
    handle.cancel()
    [lifetime] = fal_emulator.log.lifetimes()
    assert planned is not None and lifetime.ended_at is not None
    assert lifetime.ended_at < planned and lifetime.ended_at <= datetime.now(UTC)
    assert lifetime.started_at is None  # it was still queued: fal removes it
    assert not lifetime.in_flight_at(datetime.now(UTC))


def test_a_hanging_request_never_ends_until_cancelled(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency, fal_emulator.queue_fraction = 0.1, 0.1
    handle = fal_sync_client.submit(MODEL, {"prompt": "stuck [fault:run=hang]"})
    assert fal_emulator.log.lifetimes()[0].ended_at is None
    time.sleep(0.05)
    handle.cancel()
    [lifetime] = fal_emulator.log.lifetimes()
    assert lifetime.started_at is not None and lifetime.ended_at is not None


def test_prompts_queued_more_than_once_are_named(
    fal_emulator: FalEmulator, fal_sync_client: fal_client.SyncClient
) -> None:
    fal_emulator.latency = 0.05
    for prompt in ("row 1", "row 2", "row 2"):
        fal_sync_client.submit(MODEL, {"prompt": prompt})
    assert fal_emulator.log.queued_per_prompt() == {"row 1": 1, "row 2": 2}
    assert fal_emulator.log.prompts_queued_twice() == {"row 2": 2}
    assert fal_emulator.log.prompts_queued_twice(prompt_contains="row 1") == {}
