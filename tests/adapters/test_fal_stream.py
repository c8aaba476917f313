"""fal's status stream through the real adapter, against the emulator over TLS: the statuses
as fal pushes them, each refusal and break told apart (the service polls after one, opens the
stream again after the other), the deadline kept whatever the stream does, no key in a
message."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from imagen4ctl.adapters.fal import FalAdapter, FalStatus, FalTimeout
from imagen4ctl.adapters.fal_stream import StreamBroken, StreamRefused, stream_status
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.errors import FalError

MODEL = "fal-ai/imagen4/preview"
CANARY = "canary-key-id:canary-secret-7Hq2"


@pytest.fixture
def fal(fal_emulator: FalEmulator) -> Iterator[FalAdapter]:
    yield FalAdapter(CANARY)


def submitted(fal: FalAdapter, prompt: str) -> str:
    return fal.submit(MODEL, {"prompt": prompt}, Deadline(10)).request_id


def follow(fal: FalAdapter, request_id: str, seconds: float = 10) -> list[FalStatus]:
    return list(stream_status(fal, MODEL, request_id, Deadline(seconds)))


def test_the_stream_gives_each_status_until_completed(fal: FalAdapter,
                                                      fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 0.6
    request_id = submitted(fal, "streamed")
    statuses = follow(fal, request_id)
    states = [s.state for s in statuses]
    assert states[0] == "IN_QUEUE" and "IN_PROGRESS" in states and states[-1] == "COMPLETED"
    assert states.count("COMPLETED") == 1
    running = [s for s in statuses if s.state == "IN_PROGRESS"]
    assert running[-1].logs and running[-1].logs[0].startswith("Generating 1 image(s)")
    # The same parsing as the status call: the last event is what the status call says.
    assert statuses[-1] == fal.status(MODEL, request_id, Deadline(5))
    kinds = [e.kind for e in fal_emulator.log.for_request(request_id)]
    assert kinds == ["submit", "stream", "status"]


def test_an_error_at_fal_comes_as_a_completed_status_with_the_error(
    fal: FalAdapter, fal_emulator: FalEmulator
) -> None:
    request_id = submitted(fal, "breaks [fault:run=error:request_timeout]")
    final = follow(fal, request_id)[-1]
    assert (final.state, final.error, final.error_type) == (
        "COMPLETED", "Request timed out", "request_timeout")


def test_keep_alive_comments_are_not_statuses(fal: FalAdapter,
                                              fal_emulator: FalEmulator) -> None:
    fal_emulator.latency, fal_emulator.keepalive = 1.0, 0.02
    statuses = follow(fal, submitted(fal, "chatty"))
    assert statuses[-1].state == "COMPLETED"
    assert len(statuses) < 10  # some 40 comment lines came with them


@pytest.mark.parametrize(("fault", "said"), [
    ("stream=refuse", "fal answered the status stream with 404: Not Found"),
    ("stream=503", "fal answered the status stream with 503: Service Unavailable"),
    ("stream=ingress502", "fal answered the status stream with 502"),
    ("stream=malformed", "fal answered the status stream with application/json, not an event "
                         "stream"),
])
def test_a_stream_that_will_not_come_is_refused(fal: FalAdapter, fault: str, said: str) -> None:
    request_id = submitted(fal, f"no stream [fault:{fault}]")
    with pytest.raises(StreamRefused) as refused:
        follow(fal, request_id)
    assert refused.value.message == said


@pytest.mark.parametrize(("fault", "said"), [
    ("stream=cut", "the status stream broke (connection dropped)"),
    ("stream=drop", "the status stream could not be opened (cannot reach fal at 127.0.0.1: "
                    "connection dropped)"),
])
def test_a_stream_that_breaks_is_broken_not_refused(fal: FalAdapter, fault: str,
                                                    said: str) -> None:
    request_id = submitted(fal, f"broken [fault:{fault}]")
    with pytest.raises(StreamBroken) as broken:
        follow(fal, request_id)
    assert broken.value.message == said


def test_fal_out_of_reach_is_a_broken_stream(fal: FalAdapter,
                                             fal_emulator: FalEmulator) -> None:
    request_id = submitted(fal, "then fal goes away")
    fal_emulator.faults = "stream=drop"
    with pytest.raises(StreamBroken):
        follow(fal, request_id)


@pytest.mark.parametrize("keepalive", [15.0, 0.05])
def test_a_stream_that_never_completes_ends_by_the_deadline(
    fal: FalAdapter, fal_emulator: FalEmulator, keepalive: float
) -> None:
    """Silent (fal's 15 s keep-alive) or chatty, it ends by the deadline, not after it."""
    fal_emulator.keepalive = keepalive
    request_id = submitted(fal, "never ends [fault:run=hang]")
    deadline = Deadline(1.0)
    seen: list[FalStatus] = []
    with pytest.raises(FalTimeout):
        for status in stream_status(fal, MODEL, request_id, deadline):
            seen.append(status)
    assert -0.05 < -deadline.remaining() < 0.3
    assert seen[-1].state == "IN_PROGRESS"


def test_leaving_the_stream_early_closes_it(fal: FalAdapter, fal_emulator: FalEmulator) -> None:
    fal_emulator.latency = 0.5
    request_id = submitted(fal, "left early")
    statuses = stream_status(fal, MODEL, request_id, Deadline(10))
    assert next(statuses).state == "IN_QUEUE"
    statuses.close()
    # The adapter goes on working on the same client (its pool is not left in a bad state).
    time.sleep(0.6)
    assert fal.status(MODEL, request_id, Deadline(5)).state == "COMPLETED"


@pytest.mark.parametrize("fault", ["stream=refuse", "stream=cut", "stream=401", "stream=drop"])
def test_the_key_is_in_no_message(fal: FalAdapter, fault: str) -> None:
    request_id = submitted(fal, f"secret [fault:{fault}]")
    with pytest.raises(FalError) as raised:
        follow(fal, request_id)
    text = f"{raised.value.message} {raised.value.hint} {raised.value!r}"
    for piece in (CANARY, "canary-secret", "7Hq2"):
        assert piece not in text
