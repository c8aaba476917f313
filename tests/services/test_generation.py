"""The generation service's batch: places at fal held from submission to fal's final status,
deadlines per place, when the status calls go out, and a locked fal account (the first refusal
stops the submissions, every row gets a decision, what was already running is still
collected). Against the emulator over TLS with the real fal_client, real databases and a
local images folder."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from imagen4ctl.adapters.fal import FalAdapter, FalStatus, Submitted
from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import Database, parse_database_url
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.log import RequestLog
from imagen4ctl.errors import FalAccountLocked, GenerationFailed
from imagen4ctl.services.generation import (
    NOT_SUBMITTED_LOCKED,
    GenerationService,
    GenerationSpec,
)
from imagen4ctl.services.outcome import Progress
from imagen4ctl.services.pacing import FalSlot
from imagen4ctl.settings import Follow
from tests.commands.test_generate import LOCKED, rows

KEY = "emulator-key-0001"
MODEL = "fal-ai/imagen4/preview"


def make_service(db_url: str, fal: FalAdapter, fal_emulator: FalEmulator, tmp_path: Path,
                 follow: Follow = "auto") -> GenerationService:
    return GenerationService(
        Database(db_url), LocalStorage(tmp_path / "images"), fal, model=MODEL,
        prefix="generations/", max_image_bytes=10 * 1024 * 1024,
        trusted_hosts=frozenset({fal_emulator.host}), follow=follow)


@pytest.fixture
def service(migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path
            ) -> Iterator[GenerationService]:
    service = make_service(migrated_db, FalAdapter(KEY), fal_emulator, tmp_path)
    yield service
    service.database.dispose()


def specs(*prompts: str) -> list[GenerationSpec]:
    return [GenerationSpec(user_id="42", prompt=prompt) for prompt in prompts]


def generate_one(service: GenerationService, prompt: str) -> None:
    """One generation, which must complete; the service's database is closed after."""
    [spec] = specs(prompt)
    try:
        assert service.generate(spec, Deadline(30.0)).status == "COMPLETED"
    finally:
        service.database.dispose()


def completed_at(db_url: str) -> dict[str, datetime]:
    """When each generation's row became COMPLETED, by fal request id (aware UTC)."""
    engine = create_engine(parse_database_url(db_url))
    with Session(engine) as session:
        rows = session.execute(select(Generation.fal_request_id, Generation.completed_at)
                               .where(Generation.status == "COMPLETED")).all()
    engine.dispose()
    return {rid: at if at.tzinfo else at.replace(tzinfo=UTC) for rid, at in rows}


def fal_spans(log: RequestLog) -> dict[str, tuple[datetime, datetime]]:
    """Per request: from when fal queued it until fal ended it (its client learns of the end
    after that, by its status stream or a status call)."""
    return {life.request_id: (life.queued_at, life.ended_at) for life in log.lifetimes()
            if life.ended_at is not None}


def in_flight_at_submissions(spans: dict[str, tuple[datetime, datetime]]) -> list[int]:
    """How many requests were at fal (submitted, not yet final) as each one was submitted."""
    return [sum(1 for start, end in spans.values() if start <= at < end)
            for at, _ in spans.values()]


# --- the batch at fal ---


def test_a_batch_never_has_more_than_concurrency_requests_at_fal(
    service: GenerationService, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency = 0.3
    outcomes = service.run_batch(specs(*(f"bounded {i}" for i in range(10))), concurrency=3,
                                 timeout=60)
    assert [o.status for o in outcomes] == ["COMPLETED"] * 10
    spans = fal_spans(fal_emulator.log)
    assert len(spans) == 10
    assert max(in_flight_at_submissions(spans)) == 3


def test_the_next_submission_does_not_wait_for_the_previous_download(
    service: GenerationService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    """One place: the second generation is submitted once fal reports the first COMPLETED,
    while the first one's image (trickled over 1.5 s) is still being stored."""
    fal_emulator.latency = 0.2
    outcomes = service.run_batch(specs("slow image [fault:file=slow:1.5]", "next one"),
                                 concurrency=1, timeout=60)
    assert [o.status for o in outcomes] == ["COMPLETED", "COMPLETED"]
    first, second = (o.fal_request_id for o in outcomes)
    assert first is not None and second is not None
    spans = fal_spans(fal_emulator.log)
    assert spans[first][1] <= spans[second][0]  # the place was free at fal
    assert spans[second][0] < completed_at(migrated_db)[first]


@dataclass
class TimedSubmitFal(FalAdapter):
    """fal's real queue; notes when each submission went out and was answered, the first one
    answered `delay` seconds late."""

    delay: float = 0.0
    calls: list[tuple[float, float]] = field(default_factory=list)

    def submit(self, endpoint: str, arguments: dict[str, Any], deadline: Deadline) -> Submitted:
        started = time.monotonic()
        submission = super().submit(endpoint, arguments, deadline)
        if not self.calls:
            time.sleep(self.delay)
        self.calls.append((started, time.monotonic()))
        return submission


def test_a_batch_first_submission_goes_out_alone(
    migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path
) -> None:
    """The fal client and its first connection are made once, not by a whole first wave."""
    fal_emulator.latency = 0.1
    fal = TimedSubmitFal(KEY, delay=0.3)
    service = make_service(migrated_db, fal, fal_emulator, tmp_path)
    try:
        outcomes = service.run_batch(specs(*(f"alone {i}" for i in range(6))), concurrency=4,
                                     timeout=30)
    finally:
        service.database.dispose()
    assert [o.status for o in outcomes] == ["COMPLETED"] * 6
    (_, first_answered), *others = fal.calls
    assert len(others) == 5
    assert all(started >= first_answered for started, _ in others)


def test_a_deadline_starts_when_the_generation_gets_its_place(
    service: GenerationService, fal_emulator: FalEmulator
) -> None:
    """The second generation waits ~1.2 s for the one place, then needs ~1 s of its 2 s."""
    fal_emulator.latency = 0.05
    outcomes = service.run_batch(specs("first [fault:latency=1.2]", "second [fault:latency=1]"),
                                 concurrency=1, timeout=2.0)
    assert [o.status for o in outcomes] == ["COMPLETED", "COMPLETED"]


def test_failures_give_their_place_back(service: GenerationService,
                                        fal_emulator: FalEmulator) -> None:
    """One place and failures on every path: a place kept by a failure would stop the batch."""
    fal_emulator.latency = 0.1
    batch = specs("refused [fault:submit=400]", "breaks [fault:run=error]",
                  "no images [fault:run=noimages]", "bad file [fault:file=notimage]", "fine")
    finished: list[list[str]] = []
    runner = threading.Thread(target=lambda: finished.append(
        [o.status for o in service.run_batch(batch, concurrency=1, timeout=30)]), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert finished == [["FAILED", "FAILED", "FAILED", "FAILED", "COMPLETED"]]


# --- one generation with a place: released exactly once on every path ---


def interrupt_on(phase: str) -> Any:
    def notify(progress: Progress) -> None:
        if progress.phase == phase:
            raise KeyboardInterrupt

    return notify


@pytest.mark.parametrize(("prompt", "options", "status"), [
    ("fine", {}, "COMPLETED"),
    ("refused [fault:submit=400]", {}, "FAILED"),
    ("breaks [fault:run=error]", {}, "FAILED"),
    ("fine", {"wait": False}, "PROCESSING"),
    ("never ends [fault:run=hang]", {"deadline": 0.6}, "PROCESSING"),
    ("fine", {"on_progress": interrupt_on("submitting")}, "PENDING"),
    ("fine", {"on_progress": interrupt_on("running")}, "PROCESSING"),
    ("fine", {"on_progress": interrupt_on("downloading")}, "PROCESSING"),
])
def test_run_releases_its_place_once(service: GenerationService, fal_emulator: FalEmulator,
                                     prompt: str, options: dict[str, Any], status: str) -> None:
    fal_emulator.latency = 0.2
    places = threading.BoundedSemaphore(1)  # a second release would raise ValueError
    service.preflight()
    [spec] = specs(prompt)
    generation_id = service.create(spec)
    deadline = Deadline(options.pop("deadline", 30.0))
    outcome = service.run(generation_id, spec, deadline, slot=FalSlot(places), **options)
    assert outcome.status == status
    assert places.acquire(blocking=False)


def test_run_without_a_place_still_generates(service: GenerationService) -> None:
    [spec] = specs("on its own")
    assert service.generate(spec, Deadline(30.0)).status == "COMPLETED"


# --- when the status calls go out, when polling ---


@dataclass
class SlowStatusFal(FalAdapter):
    """fal's real queue, with each status answer `delay` seconds late and the submission's
    answer `submit_delay` late; notes when the submission started and left, and when each
    status call went out."""

    delay: float = 0.0
    submit_delay: float = 0.0
    started: float = 0.0
    sent: float = 0.0
    asked: list[float] = field(default_factory=list)

    def submit(self, endpoint: str, arguments: dict[str, Any], deadline: Deadline) -> Submitted:
        self.started = time.monotonic()
        submission = super().submit(endpoint, arguments, deadline)
        time.sleep(self.submit_delay)
        self.sent = submission.sent_at
        return submission

    def status(self, endpoint: str, request_id: str, deadline: Deadline) -> FalStatus:
        self.asked.append(time.monotonic())
        time.sleep(self.delay)
        return super().status(endpoint, request_id, deadline)


def test_slow_status_answers_do_not_stretch_the_interval(
    migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path
) -> None:
    """A call goes out one interval after the previous one went out, not after its answer
    came; the first one interval after the submission, whose answer said IN_QUEUE."""
    fal_emulator.latency = 0.9
    fal = SlowStatusFal(KEY, delay=0.06)
    generate_one(make_service(migrated_db, fal, fal_emulator, tmp_path, "poll"), "patient")
    gaps = [b - a for a, b in zip(fal.asked, fal.asked[1:], strict=False)]
    assert len(gaps) >= 5
    assert min(gaps) >= 0.09
    assert statistics.median(gaps) < 0.1 + 0.03  # answered 0.06 s late: 0.16 s apart otherwise
    assert fal.asked[0] - fal.sent >= 0.09


def test_a_late_answer_to_the_submission_does_not_delay_the_status_calls(
    migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path
) -> None:
    """fal's clock starts when the submission arrives, not when its answer does: answered
    0.3 s late, the first status call (due 0.1 s after the submission left) goes out at once."""
    fal_emulator.latency = 0.6
    fal = SlowStatusFal(KEY, submit_delay=0.3)
    generate_one(make_service(migrated_db, fal, fal_emulator, tmp_path, "poll"),
                 "answered late")
    assert fal.started <= fal.sent < fal.started + 0.3  # it left before its late answer
    assert 0.3 <= fal.asked[0] - fal.sent < 0.35  # an interval after the answer: >= 0.4


# --- a locked fal account ---


def test_a_locked_account_costs_one_attempt_and_decides_every_row(
    service: GenerationService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    fal_emulator.locked_keys = {KEY}
    outcomes = service.run_batch(specs(*(f"prompt {n}" for n in range(20))),
                                 concurrency=4, timeout=30)

    assert fal_emulator.log.submission_count() == 1
    first, *rest = outcomes
    assert isinstance(first.exception, FalAccountLocked) and first.error == LOCKED
    assert all(o.error == NOT_SUBMITTED_LOCKED for o in rest)
    assert all(isinstance(o.exception, GenerationFailed) for o in rest)
    stored = rows(migrated_db)
    assert [r.status for r in stored] == ["FAILED"] * 20
    assert stored[0].error == LOCKED and stored[0].submit_started_at is not None
    assert {r.error for r in stored[1:]} == {NOT_SUBMITTED_LOCKED}
    assert all(r.submit_started_at is None and r.fal_request_id is None for r in stored[1:])


def test_a_lock_mid_batch_leaves_the_running_ones_to_finish(
    service: GenerationService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    """"Exactly ONE generation succeeds, then the next call is blocked" (fal-ai/fal #1163)."""
    fal_emulator.latency = 1.0
    locked_after_first: list[str] = []

    def lock_once_submitted() -> None:
        deadline = time.monotonic() + 10
        while not fal_emulator.request_ids() and time.monotonic() < deadline:
            time.sleep(0.005)
        fal_emulator.locked_keys = {KEY}
        locked_after_first.extend(fal_emulator.request_ids())

    locker = threading.Thread(target=lock_once_submitted)
    locker.start()
    outcomes = service.run_batch(specs(*(f"prompt {n}" for n in range(6))),
                                 concurrency=1, timeout=30)
    locker.join()

    assert len(locked_after_first) == 1
    statuses = [o.status for o in outcomes]
    assert statuses[0] == "COMPLETED"  # status and result still work for a locked account
    assert statuses[1:] == ["FAILED"] * 5
    assert fal_emulator.log.submission_count() == 2  # the one that ran, and the refused one
    assert outcomes[1].error == LOCKED
    assert [o.error for o in outcomes[2:]] == [NOT_SUBMITTED_LOCKED] * 4
    assert [r.status for r in rows(migrated_db)] == ["COMPLETED"] + ["FAILED"] * 5
