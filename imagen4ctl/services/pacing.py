"""How a run paces its calls to fal: the places a batch holds there, and when to ask for a
request's status again. Both serve every generation of one run, from many threads."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque


class FalSlot:
    """One of a batch's `--concurrency` places at fal, held from submission until fal reports
    the final status: the result is then fetched and stored while the next generation runs.

    Taken (waiting for a free place) on construction; `release` gives it back once, however
    often it is called, so every path of `GenerationService.run` can call it.
    """

    def __init__(self, places: threading.Semaphore,
                 submitted: threading.Event | None = None) -> None:
        places.acquire()
        self._places = places
        self._lock = threading.Lock()
        self._held = True
        self._submitted = submitted

    def submitted(self) -> None:
        """fal has answered the submission (or it failed): sets the event given, if any."""
        if self._submitted is not None:
            self._submitted.set()

    def release(self) -> None:
        self.submitted()
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._places.release()


class PollSchedule:
    """When to ask fal for a status again: every `interval` (fal_client's own 0.1 s), but at
    the moment this run's finished requests to the same endpoint say a request is done.

    Each finished request was seen unfinished at one time and COMPLETED by another (seconds
    after its submission); the last `keep` of those intervals per endpoint are kept.

    - When they overlap (one latency explains them all, as with a model of steady speed), a
      request is done by the earliest COMPLETED time among them, `hi`: it is asked once then,
      then every `dense` seconds for `half_window`, then every `interval` again.
    - When they do not (Imagen 4's latency varies by seconds), polls are dense only in a
      window of ± `half_window` around the median of their midpoints.

    Either way a generation pays at most a few extra calls however late it completes. A
    completion recorded while requests sleep re-plans them: one whose last call went out
    before the time a request is due (`hi`, or the median), and that is past it, asks at
    once (a batch's first wave is submitted together and finishes together). Thread-safe:
    one schedule serves all generations of a run.
    """

    def __init__(self, *, dense: float = 0.01, half_window: float = 0.03, keep: int = 16) -> None:
        self.dense = dense
        self.half_window = half_window
        self._keep = keep
        self._recorded = threading.Condition()
        self._completions: dict[str, deque[tuple[float, float]]] = {}

    def record(self, endpoint: str, unfinished_at: float, completed_at: float) -> None:
        """A request seen unfinished at `unfinished_at` and COMPLETED by `completed_at`
        (seconds after its submission)."""
        with self._recorded:
            times = self._completions.setdefault(endpoint, deque(maxlen=self._keep))
            times.append((unfinished_at, completed_at))
            self._recorded.notify_all()

    def expected(self, endpoint: str) -> float | None:
        """When a request is expected to complete, seconds after its submission."""
        with self._recorded:
            window = self._window(endpoint)
        return None if window is None else (window[0] + window[1]) / 2

    def delay(self, endpoint: str, elapsed: float, interval: float,
              asked: float | None = None) -> float:
        """Seconds to wait before the next status call, `elapsed` seconds after submission;
        `asked`: when the last call went out."""
        with self._recorded:
            return self._delay(endpoint, elapsed, interval, asked)

    def sleep(self, endpoint: str, submitted: float, interval: float, delay: float,
              asked: float | None = None) -> None:
        """Sleep `delay` seconds, or less when a completion recorded meanwhile says the request
        is due sooner; `submitted` is the request's submission time (monotonic clock) and
        `asked` when its last status call went out (seconds after submission)."""
        wake = time.monotonic() + delay
        with self._recorded:
            while (remaining := wake - time.monotonic()) > 0:
                if self._recorded.wait(remaining):
                    now = time.monotonic()
                    wake = min(wake, now + self._delay(endpoint, now - submitted, interval,
                                                       asked))

    def _window(self, endpoint: str) -> tuple[float, float, bool] | None:
        """(from, to, whether one latency explains every recorded completion)."""
        times = self._completions.get(endpoint)
        if not times:
            return None
        lo, hi = max(t[0] for t in times), min(t[1] for t in times)
        if lo < hi:
            return lo, hi, True
        middle = statistics.median((a + b) / 2 for a, b in times)
        return middle - self.half_window, middle + self.half_window, False

    def _delay(self, endpoint: str, elapsed: float, interval: float,
               asked: float | None = None) -> float:
        window = self._window(endpoint)
        if window is None:
            return interval
        lo, hi, steady = window
        due = hi if steady else (lo + hi) / 2
        if asked is not None and asked < due <= elapsed:
            return 0.0  # due since its last call: ask now
        if steady:
            if elapsed < hi:
                return min(interval, hi - elapsed)  # asked once when it is due
            return min(self.dense, interval) if elapsed < hi + self.half_window else interval
        if elapsed >= hi:
            return interval
        if elapsed >= lo:
            return min(self.dense, interval)
        return min(interval, lo - elapsed)  # wake up at the window's start
