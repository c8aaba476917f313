"""The generation service's batch: places at fal held from submission to fal's final status,
deadlines per place, and the status polling schedule. Against the emulator over TLS with the
real fal_client, real databases and a local images folder."""

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

from imagen4ctl.adapters.fal import Deadline, FalAdapter, FalStatus, Submitted
from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import Database, parse_database_url
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.emulator.log import RequestLog
from imagen4ctl.services.generation import GenerationService, GenerationSpec
from imagen4ctl.services.outcome import Progress
from imagen4ctl.services.pacing import FalSlot, PollSchedule

KEY = "emulator-key-0001"
MODEL = "fal-ai/imagen4/preview"


def make_service(db_url: str, fal: FalAdapter, fal_emulator: FalEmulator, tmp_path: Path
                 ) -> GenerationService:
    return GenerationService(
        Database(db_url), LocalStorage(tmp_path / "images"), fal, model=MODEL,
        prefix="generations/", max_image_bytes=10 * 1024 * 1024,
        trusted_hosts=frozenset({fal_emulator.host}))


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
    """Per request: from its submission until fal first answered its status as final."""
    spans = {}
    for request_id, entries in log.requests_by_id().items():
        submitted = next(e.at for e in entries if e.kind == "submit")
        final = next(e.at for e in entries if e.kind == "status" and e.status == 200)
        spans[request_id] = (submitted, final)
    return spans


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


def test_a_completed_request_is_not_asked_its_status_again_for_its_result(
    service: GenerationService, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency = 0.2
    outcomes = service.run_batch(specs("asked once", "asked once too"), concurrency=2,
                                 timeout=30)
    assert [o.status for o in outcomes] == ["COMPLETED"] * 2
    for outcome in outcomes:
        assert outcome.fal_request_id is not None
        calls = [(e.kind, e.status) for e in fal_emulator.log.for_request(outcome.fal_request_id)
                 if e.kind in {"status", "result"}]
        assert calls[-2:] == [("status", 200), ("result", 200)]
        assert calls.count(("status", 200)) == 1


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


# --- the polling schedule ---


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
    generate_one(make_service(migrated_db, fal, fal_emulator, tmp_path), "patient")
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
    generate_one(make_service(migrated_db, fal, fal_emulator, tmp_path), "answered late")
    assert fal.started <= fal.sent < fal.started + 0.3  # it left before its late answer
    assert 0.3 <= fal.asked[0] - fal.sent < 0.35  # an interval after the answer: >= 0.4


def test_without_a_completion_the_normal_interval_applies() -> None:
    schedule = PollSchedule()
    assert schedule.expected("a/b") is None
    assert [schedule.delay("a/b", t, 0.1) for t in (0.0, 0.95, 5.0)] == [0.1, 0.1, 0.1]


def test_a_steady_latency_is_asked_for_once_when_it_is_due() -> None:
    """Completions that one latency explains: the next request is asked when every one of
    them had been seen done, then densely for a short while if it is not, then normally."""
    schedule = PollSchedule(dense=0.02, half_window=0.06)
    schedule.record("a/b", 0.90, 1.10)  # seen running at 0.90 s, done by 1.10 s
    schedule.record("a/b", 0.98, 1.02)  # a closer look: done between 0.98 and 1.02 s
    assert schedule.expected("a/b") == pytest.approx(1.0)
    assert schedule.delay("a/b", 0.5, 0.1) == 0.1
    assert schedule.delay("a/b", 0.95, 0.1) == pytest.approx(0.07)  # the call goes at 1.02
    assert schedule.delay("a/b", 1.02, 0.1) == 0.02  # not done yet: dense for 0.06 s
    assert schedule.delay("a/b", 1.07, 0.1) == 0.02
    assert schedule.delay("a/b", 1.09, 0.1) == 0.1
    assert schedule.delay("a/b", 1.05, 0.1, asked=0.95) == 0.0  # due since its last call
    assert schedule.delay("other/endpoint", 0.95, 0.1) == 0.1


def test_a_varying_latency_gets_dense_polls_around_the_median_completion() -> None:
    schedule = PollSchedule(dense=0.02, half_window=0.06)
    for unfinished, done in ((0.9, 1.1), (2.9, 3.1), (0.7, 0.9)):  # no one latency fits all
        schedule.record("a/b", unfinished, done)
    assert schedule.expected("a/b") == pytest.approx(1.0)
    assert schedule.delay("a/b", 0.5, 0.1) == 0.1
    assert schedule.delay("a/b", 0.9, 0.1) == pytest.approx(0.04)  # wakes at the window
    assert schedule.delay("a/b", 0.95, 0.1) == 0.02
    assert schedule.delay("a/b", 1.05, 0.1) == 0.02
    assert schedule.delay("a/b", 1.07, 0.1) == 0.1
    assert schedule.delay("a/b", 1.05, 0.1, asked=0.95) == 0.0  # due since its last call
    assert schedule.delay("a/b", 1.05, 0.1, asked=1.01) == 0.02


def test_the_estimate_follows_recent_completions() -> None:
    schedule = PollSchedule(keep=4)
    for _ in range(4):
        schedule.record("a/b", 4.9, 5.1)
    for _ in range(3):
        schedule.record("a/b", 0.9, 1.1)
    assert schedule.expected("a/b") == pytest.approx(1.0)  # median of the last four


def test_dense_polls_per_request_are_bounded_however_late_it_completes() -> None:
    schedule = PollSchedule(dense=0.02, half_window=0.06)
    schedule.record("a/b", 0.9, 1.1)
    elapsed, dense = 0.0, 0
    while elapsed < 10.0:  # a request still running long after the others completed
        delay = schedule.delay("a/b", elapsed, 0.1)
        dense += delay == 0.02
        elapsed += delay
    assert 0 < dense <= 2 * 0.06 / 0.02 + 1


def test_a_completion_passed_since_the_last_status_call_wakes_the_poller_at_once() -> None:
    """A first wave finishes together: once one is seen done, the others ask again now."""
    schedule = PollSchedule(dense=0.02, half_window=0.06)
    woke: dict[float, float] = {}

    def poller(asked: float) -> None:
        submitted = time.monotonic() - 1.0  # submitted a second ago
        schedule.sleep("a/b", submitted, interval=1.5, delay=1.5, asked=asked)
        woke[asked] = time.monotonic()

    before = threading.Thread(target=poller, args=(0.5,), daemon=True)  # asked before 0.6
    after = threading.Thread(target=poller, args=(0.8,), daemon=True)  # asked since
    before.start()
    after.start()
    time.sleep(0.2)  # both are asleep
    recorded = time.monotonic()
    schedule.record("a/b", 0.5, 0.7)  # a sibling completed ~0.6 s after its submission
    before.join(timeout=1.0)
    assert not before.is_alive() and woke[0.5] - recorded < 0.5
    after.join(timeout=0.5)
    assert after.is_alive()  # its last answer is newer than that: it sleeps on
    after.join(timeout=5)


def test_a_first_completion_wakes_sleeping_pollers_into_the_window() -> None:
    schedule = PollSchedule(dense=0.02, half_window=5.0)
    sleeping = threading.Event()

    def poller() -> None:
        submitted = time.monotonic()
        sleeping.set()
        schedule.sleep("a/b", submitted, interval=60.0, delay=60.0)

    sleeper = threading.Thread(target=poller, daemon=True)
    sleeper.start()
    sleeping.wait(10)
    for _ in range(50):  # until the poller is surely waiting
        schedule.record("a/b", 0.0, 0.2)  # requests complete ~0.1 s after submission
        sleeper.join(timeout=0.1)
        if not sleeper.is_alive():
            break
    assert not sleeper.is_alive()
