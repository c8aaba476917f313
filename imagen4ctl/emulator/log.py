"""What the emulator saw, for tests to assert on: one entry per HTTP request it answered.

Keys are recorded only as a salted SHA-256 fingerprint, so the log can be printed freely.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Kind = Literal["submit", "status", "result", "cancel", "file", "platform", "other"]


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
    at: datetime  # timezone-aware UTC
    prompt: str | None = None  # submissions only, as sent (fault directives included)


class RequestLog:
    """Thread-safe, append-only until `clear()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LogEntry] = []

    def record(self, entry: LogEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

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
