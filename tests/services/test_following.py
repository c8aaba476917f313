"""How a generation hears from fal: the status stream when it can be had, polling at a fixed
interval when it is refused or breaks twice, and every rule of the deadline kept either way.
Through the generation service and the real adapter, against the emulator; the emulator's
request log counts what each generation cost at fal."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from imagen4ctl.adapters.fal import FalAdapter
from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db.session import Database
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.services.generation import GenerationService, GenerationSpec
from imagen4ctl.services.outcome import Outcome, Progress
from imagen4ctl.settings import Follow
from tests.services.conftest import MODEL, MakeService

CANARY = "canary-key-id:canary-secret-7Hq2"
CALLS = ("submit", "status", "stream", "result", "cancel")


def calls(fal_emulator: FalEmulator, outcome: Outcome) -> Counter[str]:
    """The requests to fal one generation made, by kind (image downloads apart)."""
    assert outcome.fal_request_id is not None
    return Counter(e.kind for e in fal_emulator.log.for_request(outcome.fal_request_id)
                   if e.kind in CALLS)


def generate(make_service: MakeService, prompt: str, *, follow: Follow = "auto",
             seconds: float = 30.0) -> Outcome:
    service = make_service()
    service.follow = follow
    return service.generate(GenerationSpec(user_id="42", prompt=prompt), Deadline(seconds))


def test_a_batch_is_followed_by_the_stream_at_four_requests_a_generation(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency = 0.5
    service = make_service()
    outcomes = service.run_batch([GenerationSpec(user_id="42", prompt=f"streamed {n}")
                                  for n in range(6)], concurrency=3, timeout=30)
    assert [o.status for o in outcomes] == ["COMPLETED"] * 6
    for outcome in outcomes:
        assert calls(fal_emulator, outcome) == {"submit": 1, "stream": 1, "result": 1}
        assert outcome.followed == "fal's status stream"


def test_a_refused_stream_gives_way_to_polling_at_a_fixed_interval(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency = 1.0
    outcome = generate(make_service, "refused [fault:stream=refuse]")
    assert outcome.status == "COMPLETED"
    made = calls(fal_emulator, outcome)
    assert made["stream"] == 1  # refused: not asked again
    assert 5 <= made["status"] <= 1.0 / 0.1 + 3  # every 0.1 s for L = 1 s, no denser
    assert outcome.followed == ("polling every 0.1s, after the status stream was refused: fal "
                                "answered the status stream with 404: Not Found")


def test_a_stream_cut_once_is_opened_again_and_not_polled(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency = 0.5
    outcome = generate(make_service, "cut once [fault:stream=cutx1]")
    assert outcome.status == "COMPLETED"
    assert calls(fal_emulator, outcome) == {"submit": 1, "stream": 2, "result": 1}
    assert outcome.followed == ("fal's status stream, opened again after: the status stream "
                                "broke (connection dropped)")


def test_a_stream_cut_every_time_is_opened_twice_then_polled(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency = 0.5
    outcome = generate(make_service, "always cut [fault:stream=cut]")
    assert outcome.status == "COMPLETED"
    made = calls(fal_emulator, outcome)
    assert made["stream"] == 2 and 1 <= made["status"] <= 0.5 / 0.1 + 3
    assert outcome.followed.startswith("polling every 0.1s, after the status stream failed "
                                       "twice: the status stream broke")


def test_poll_mode_never_opens_the_stream(make_service: MakeService,
                                          fal_emulator: FalEmulator) -> None:
    outcome = generate(make_service, "polled", follow="poll")
    assert outcome.status == "COMPLETED"
    made = calls(fal_emulator, outcome)
    assert made["stream"] == 0 and made["status"] >= 1
    assert outcome.followed == "polling every 0.1s, as asked"


def test_stream_mode_leaves_the_row_in_flight_when_the_stream_is_refused(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    """A failed stream is not fal's verdict: the row stays PROCESSING for fix-pending."""
    outcome = generate(make_service, "stream only [fault:stream=503]", follow="stream")
    assert outcome.status == "PROCESSING"
    assert outcome.error == "status stream: fal answered the status stream with 503: Service " \
                            "Unavailable"
    assert calls(fal_emulator, outcome)["status"] == 0


def test_a_stream_silent_past_the_deadline_ends_by_it_and_leaves_the_row_running(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    """fal's 15 s between keep-alive comments is longer than the deadline: the stream says
    nothing after IN_PROGRESS, and the generation still ends on time, in flight (#18)."""
    outcome = generate(make_service, "never ends [fault:run=hang]", seconds=1.0)
    assert outcome.status == "PROCESSING"
    assert outcome.error == "still running at fal after 1s"
    assert outcome.seconds < 3.0  # by the 1 s deadline, not fal's 15 s keep-alive
    assert calls(fal_emulator, outcome) == {"submit": 1, "stream": 1}


def test_a_stream_queued_past_the_deadline_is_cancelled_as_before(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    fal_emulator.latency, fal_emulator.queue_fraction = 30.0, 0.9
    outcome = generate(make_service, "queued forever", seconds=1.0)
    assert (outcome.status, outcome.error) == ("FAILED",
                                               "timed out in queue, cancelled before it ran")
    made = calls(fal_emulator, outcome)
    assert made["stream"] == 1 and made["cancel"] == 1 and made["status"] == 1  # the check


def test_a_stream_that_stops_midway_is_left_by_an_interrupt(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    """Ctrl-C while the stream is open: the row is handed over, the stream closed."""
    fal_emulator.latency = 1.0

    def interrupt(progress: Progress) -> None:
        if progress.phase == "running":
            raise KeyboardInterrupt

    service = make_service()
    outcome = service.generate(GenerationSpec(user_id="42", prompt="interrupted"),
                               Deadline(30), on_progress=interrupt)
    assert (outcome.status, outcome.error) == ("PROCESSING", "interrupted")


@pytest.mark.parametrize("fault", ["stream=refuse", "stream=cut", "stream=401"])
def test_the_key_is_in_nothing_a_generation_says(
    migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path, fault: str
) -> None:
    service = GenerationService(
        Database(migrated_db), LocalStorage(tmp_path / "images"), FalAdapter(CANARY),
        model=MODEL, prefix="generations/", max_image_bytes=10 * 1024 * 1024,
        trusted_hosts=frozenset({fal_emulator.host}), follow="stream")
    try:
        outcome = service.generate(GenerationSpec(user_id="42", prompt=f"x [fault:{fault}]"),
                                   Deadline(10))
    finally:
        service.database.dispose()
    exception = outcome.exception
    text = " ".join(str(part) for part in (
        outcome.error, outcome.followed, exception, getattr(exception, "hint", None)))
    assert outcome.status == "PROCESSING" and "status stream" in text
    for piece in (CANARY, "canary-secret", "7Hq2"):
        assert piece not in text


def test_streams_of_a_batch_do_not_wait_for_one_another(
    make_service: MakeService, fal_emulator: FalEmulator
) -> None:
    """16 requests at once, each told of its end by its own stream within ~L."""
    fal_emulator.latency = 1.0
    service = make_service()
    outcomes = service.run_batch([GenerationSpec(user_id="42", prompt=f"wave {n}")
                                  for n in range(16)], concurrency=16, timeout=30)
    assert [o.status for o in outcomes] == ["COMPLETED"] * 16
    assert max(o.seconds for o in outcomes) < 2.0
