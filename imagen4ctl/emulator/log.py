"""What the emulator saw, for tests to assert on: one entry per HTTP request it answered,
and the life of every request it queued (when it was queued, started, ended).

Keys are recorded only as a salted SHA-256 fingerprint, so the log can be printed freely.

Concurrency, in fal's words (https://docs.fal.ai/documentation/model-apis/concurrency-limits):
"Every fal account has a global concurrency limit that determines how many requests can be in
the IN_PROGRESS state simultaneously. When you reach your limit, additional requests wait in
the queue and are dispatched as soon as a slot frees up. Requests are never rejected due to
concurrency limits." ... "Requests in the IN_QUEUE state do not count toward your limit."
imagen4ctl's own cap (FAL_MAX_CONCURRENT) is stricter: it counts a request from the moment
fal queued it until fal ended it, so `peak_in_flight()` measures that by default, and fal's
count (IN_PROGRESS only) with `running_only=True`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

Kind = Literal["submit", "status", "stream", "result", "cancel", "file", "platform",
               "other"]


def fingerprint(key: str) -> str:
    """Short, non-reversible tag of a key: equal keys give equal tags, nothing more."""
    return hashlib.sha256(f"imagen4ctl-emulator:{key}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LogEntry:
    kind: Kind
    method: str
    path: str
    # A submission's is set only when it queued a request: a refused one has none, while one
    # whose answer was lost afterwards (`submit=queued:...`) has it with the lost answer's status.
    request_id: str | None
    key_fingerprint: str | None
    status: int | None  # None: the connection was dropped without an answer
    at: datetime  # timezone-aware UTC; a status stream's when it opened
    prompt: str | None = None  # submissions only, as sent (fault directives included)


@dataclass(frozen=True)
class Lifetime:
    """One queued request at fal, from queued to ended; times are timezone-aware UTC.

    Written when the request is queued, with the times its latency gives it (so `ended_at`
    may lie in the future), and shortened when a cancel ends it early.
    """

    request_id: str
    endpoint_id: str
    prompt: str | None
    queued_at: datetime
    started_at: datetime | None  # None: cancelled while still queued, it never ran
    ended_at: datetime | None  # None: it never ends on its own (the `run=hang` fault)

    def in_flight_at(self, moment: datetime, running_only: bool = False) -> bool:
        """At fal at `moment`: queued or running (`running_only`: IN_PROGRESS only)."""
        start = self.started_at if running_only else self.queued_at
        if start is None:
            return False
        return start <= moment and (self.ended_at is None or moment < self.ended_at)


@dataclass(frozen=True)
class InFlightPeak:
    """The most requests at fal at one instant, the first instant it happened, and which."""

    count: int
    at: datetime | None
    request_ids: tuple[str, ...]


def peak_in_flight(lifetimes: Iterable[Lifetime], running_only: bool = False) -> InFlightPeak:
    """The largest number of `lifetimes` in flight at once. A request that ends at the very
    instant another starts does not overlap it: the slot was freed, then taken."""
    events: list[tuple[datetime, int, Lifetime]] = []
    for life in lifetimes:
        start = life.started_at if running_only else life.queued_at
        if start is None or (life.ended_at is not None and life.ended_at <= start):
            continue
        events.append((start, 1, life))
        if life.ended_at is not None:
            events.append((life.ended_at, -1, life))
    events.sort(key=lambda event: (event[0], event[1]))  # ends before starts at one instant
    alive: dict[str, Lifetime] = {}
    best = InFlightPeak(0, None, ())
    for moment, step, life in events:
        if step < 0:
            alive.pop(life.request_id, None)
            continue
        alive[life.request_id] = life
        if len(alive) > best.count:
            best = InFlightPeak(len(alive), moment, tuple(alive))
    return best


class RequestLog:
    """Thread-safe, append-only until `clear()` (a lifetime is shortened by its cancel)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LogEntry] = []
        self._lifetimes: dict[str, Lifetime] = {}

    def record(self, entry: LogEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def record_queued(self, lifetime: Lifetime) -> None:
        with self._lock:
            self._lifetimes[lifetime.request_id] = lifetime

    def record_cancelled(self, request_id: str, at: datetime) -> None:
        """A cancel ended the request at `at` (if it had not ended already)."""
        with self._lock:
            life = self._lifetimes.get(request_id)
            if life is None or (life.ended_at is not None and life.ended_at <= at):
                return
            started = life.started_at if life.started_at is not None and \
                life.started_at < at else None
            self._lifetimes[request_id] = replace(life, started_at=started, ended_at=at)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._lifetimes.clear()

    def entries(self, kind: Kind | None = None) -> list[LogEntry]:
        with self._lock:
            return [e for e in self._entries if kind is None or e.kind == kind]

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self.entries())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def submissions(self, prompt_contains: str | None = None, key: str | None = None,
                    status: int | None = None) -> list[LogEntry]:
        """Every submit attempt (retries and refused ones included), optionally filtered."""
        wanted = fingerprint(key) if key is not None else None
        return [
            e for e in self.entries("submit")
            if (prompt_contains is None or prompt_contains in (e.prompt or ""))
            and (wanted is None or e.key_fingerprint == wanted)
            and (status is None or e.status == status)
        ]

    def submission_count(self, prompt_contains: str | None = None, key: str | None = None,
                         status: int | None = None) -> int:
        return len(self.submissions(prompt_contains, key, status))

    def queued_count(self, prompt_contains: str | None = None, key: str | None = None) -> int:
        """Submissions that put a request in the queue, each a paid generation: a row must
        never have more than one, whatever became of their answers."""
        return sum(1 for e in self.submissions(prompt_contains, key) if e.request_id is not None)

    def for_request(self, request_id: str) -> list[LogEntry]:
        return [e for e in self.entries() if e.request_id == request_id]

    def requests_by_id(self) -> dict[str, list[LogEntry]]:
        """Entries grouped by request id, in arrival order; entries without an id are left out."""
        grouped: dict[str, list[LogEntry]] = {}
        for entry in self.entries():
            if entry.request_id is not None:
                grouped.setdefault(entry.request_id, []).append(entry)
        return grouped

    def lifetimes(self, prompt_contains: str | None = None) -> list[Lifetime]:
        """Every request fal queued, in the order it was queued, optionally by prompt."""
        with self._lock:
            found = list(self._lifetimes.values())
        return [life for life in found
                if prompt_contains is None or prompt_contains in (life.prompt or "")]

    def peak_in_flight(self, running_only: bool = False,
                       prompt_contains: str | None = None) -> InFlightPeak:
        """The most requests at fal at once: queued or running (imagen4ctl's cap), or only
        running (`running_only`, what fal's account limit counts)."""
        return peak_in_flight(self.lifetimes(prompt_contains), running_only)

    def in_flight_at(self, moment: datetime, running_only: bool = False) -> list[Lifetime]:
        return [life for life in self.lifetimes() if life.in_flight_at(moment, running_only)]

    def queued_per_prompt(self, prompt_contains: str | None = None) -> Counter[str]:
        """How many paid requests each prompt got; a row's prompt must count 1 at most."""
        return Counter(life.prompt or "" for life in self.lifetimes(prompt_contains))

    def prompts_queued_twice(self, prompt_contains: str | None = None) -> dict[str, int]:
        return {prompt: count for prompt, count in self.queued_per_prompt(prompt_contains).items()
                if count > 1}
