"""How a run paces its calls to fal: the places a batch holds there, shared by every
generation of the run, from many threads."""

from __future__ import annotations

import threading


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
