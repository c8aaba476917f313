"""The polling schedule on its own: when a run asks fal for a request's status again, and how
a completion wakes the pollers that sleep."""

from __future__ import annotations

import threading
import time

import pytest

from imagen4ctl.services.pacing import PollSchedule


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
