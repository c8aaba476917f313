"""What a generation tells its caller: progress while it runs, and how it ended (the JSON
of `generate`). Commands render these; the generation service makes them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from imagen4ctl.errors import Imagen4ctlError
from imagen4ctl.services.images import StoredImage


@dataclass
class Outcome:
    """How one generation ended (or where it stopped): the JSON of `generate`."""

    id: int | None
    user_id: str
    status: str
    fal_request_id: str | None = None
    images: list[StoredImage] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    prompt: str = ""
    aspect_ratio: str | None = None
    exception: Imagen4ctlError | None = field(default=None, repr=False)
    followed: str = ""  # how fal's statuses came: its status stream, or polling (--debug)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "user_id": self.user_id, "status": self.status,
            "fal_request_id": self.fal_request_id,
            "images": [asdict(i) for i in self.images],
            "error": self.error, "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Progress:
    """What a generation is doing now, for a live status line."""

    generation_id: int
    phase: str  # submitting, submitted, queued, running, downloading, stored, completed, failed, …
    detail: str = ""
    queue_position: int | None = None


ProgressCallback = Callable[[Progress], None]
