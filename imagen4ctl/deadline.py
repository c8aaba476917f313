"""The deadline every call of one operation shares, whoever makes the call.

A command sets it from --timeout, a service passes it on, an adapter bounds each request
by what is left of it: so it belongs to none of them.
"""

from __future__ import annotations

import time


class Deadline:
    """An absolute point in time (monotonic clock) that a whole operation must end by."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float:
        return float("inf") if self.at is None else self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.remaining() <= 0

    def bound(self, timeout: float) -> float:
        return max(0.01, min(timeout, self.remaining()))
