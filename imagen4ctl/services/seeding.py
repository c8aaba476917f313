"""seed-gallery: the incident's five verification images, and which of them are still to make."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imagen4ctl.services.generation import GenerationService, GenerationSpec

GALLERY = (
    ("1:1", "Beautiful sunset over the mountains"),
    ("3:4", "A cat playing with a ball"),
    ("16:9", "Cosmic landscape"),
    ("1:1", "Blooming garden in spring"),
    ("3:4", "An old castle"),
)


@dataclass(frozen=True)
class SeedPlan:
    owner: str
    total: int
    todo: list[tuple[str, str]]  # (aspect ratio, prompt)

    @property
    def skipped(self) -> int:
        return self.total - len(self.todo)

    def specs(self) -> list[GenerationSpec]:
        """Validated here, after the plan is shown: a bad line fails before any row is written."""
        from imagen4ctl.services.generation import GenerationSpec

        return [GenerationSpec(user_id=self.owner, prompt=p, aspect_ratio=r) for r, p in self.todo]


def plan_seed(service: GenerationService, owner: str, pairs: list[tuple[str, str]] | None, *,
              force: bool) -> SeedPlan:
    """The (ratio, prompt) pairs to generate: a rerun skips what is COMPLETED or in flight."""
    pairs = list(GALLERY) if pairs is None else pairs
    done = set() if force else service.existing_pairs(owner)
    todo = [(ratio, prompt) for ratio, prompt in pairs if (prompt, ratio) not in done]
    return SeedPlan(owner, len(pairs), todo)
