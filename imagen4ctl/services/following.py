"""How a generation hears from fal while it runs: fal's status stream, or polling.

The stream (adapters/fal_stream.py) costs one request however long fal takes, and tells of
the end as soon as fal knows it; polling costs a request every interval and learns of the end
up to an interval late. So the stream is the way, and polling at a fixed interval the
fallback when the stream cannot be had: a refused one is not asked for again, a broken one is
opened once more, then polling takes over.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import Protocol

from imagen4ctl.adapters.fal import FalAdapter, FalStatus, FalTimeout
from imagen4ctl.adapters.fal_stream import StreamBroken, StreamRefused, stream_status
from imagen4ctl.deadline import Deadline
from imagen4ctl.settings import Follow


class Told(Protocol):
    """A way fal tells of a request's end by itself (its webhook: services/webhooks.py). Given
    as `mode`, it takes the following over, and follows in a `Follow` way when not told."""

    def follow(self, following: Following) -> Iterator[FalStatus]: ...


class Following:
    """fal's statuses of one request, each as it comes, until COMPLETED or the deadline.

    Iterating yields each status and stops after COMPLETED, or without it when the deadline
    comes (the caller decides what then, from the last status). It raises FalError when fal
    can no longer be followed: a status call failed, or, with mode "stream", the stream did;
    `step` names which, for the row's error. `how` says which way was taken, for --debug.
    `submitted` is when the submission left (monotonic clock): the first poll is due an
    interval after it. Close the iterator when leaving it early: that closes the stream.
    """

    def __init__(self, fal: FalAdapter, endpoint: str, request_id: str, deadline: Deadline, *,
                 submitted: float, mode: Follow | Told = "auto",
                 interval: float = 0.1) -> None:
        self.fal = fal
        self.endpoint = endpoint
        self.request_id = request_id
        self.deadline = deadline
        self.submitted = submitted
        self.mode = mode
        self.interval = interval
        self.step = "status"
        self.how = ""

    def __iter__(self) -> Generator[FalStatus, None, None]:
        if not isinstance(self.mode, str):
            yield from self.mode.follow(self)
            return
        if self.mode == "poll":
            self.how = f"polling every {self.interval:g}s, as asked"
        else:
            why = yield from self._stream()
            if why is None:
                return
            self.how = f"polling every {self.interval:g}s, after {why}"
        yield from self._poll()

    def _stream(self) -> Generator[FalStatus, None, str | None]:
        """The stream's statuses; returns why polling must take over, None when done."""
        self.how = "fal's status stream"
        reopened = False
        error: StreamRefused | StreamBroken
        while True:
            statuses = stream_status(self.fal, self.endpoint, self.request_id, self.deadline)
            try:
                yield from statuses
                return None  # COMPLETED
            except FalTimeout:
                return None  # the deadline: the caller takes it from here
            except StreamRefused as e:
                why, error = f"the status stream was refused: {e.message}", e
            except StreamBroken as e:
                if not reopened:
                    reopened = True
                    self.how = f"fal's status stream, opened again after: {e.message}"
                    continue
                why, error = f"the status stream failed twice: {e.message}", e
            finally:
                statuses.close()
            if self.mode == "stream":
                self.step, self.how = "status stream", f"fal's status stream, until {why}"
                raise error
            return why

    def _poll(self) -> Iterator[FalStatus]:
        """A status call every `interval`, counted from when the previous one went out (not
        from its answer, which a busy moment may slow), until COMPLETED or the deadline."""
        asked = self.submitted
        while True:
            delay = max(0.0, self.interval - (time.monotonic() - asked))
            if self.deadline.remaining() <= delay:
                return
            time.sleep(delay)
            asked = time.monotonic()
            try:
                status = self.fal.status(self.endpoint, self.request_id, self.deadline)
            except FalTimeout:
                return
            yield status
            if status.state == "COMPLETED":
                return
