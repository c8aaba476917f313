"""The Imagen 4 endpoints at fal and the input each accepts, keyed by fal endpoint id.

A spec is checked here before a row is written, so a bad value is refused without paying
fal for a 422. Pure (standard library and `imagen4ctl.errors` only): the emulator can hold
its app to the same rules. A new endpoint (fast, ultra) is one more `Endpoint` in `ENDPOINTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagen4ctl.errors import UsageError


@dataclass(frozen=True)
class Endpoint:
    """One fal endpoint's input: its fields, the values they allow, and fal's defaults."""

    id: str
    # Every input field imagen4ctl sends, in the order it sends them.
    fields: tuple[str, ...]
    # Sent only when given: fal's own default (or none) applies otherwise.
    optional: tuple[str, ...]
    aspect_ratios: tuple[str, ...]
    resolutions: tuple[str, ...]
    max_images: int
    max_prompt_chars: int
    seeds: int  # a seed is 0 <= seed < seeds
    default_aspect_ratio: str
    default_num_images: int
    default_resolution: str  # fal's, when none is sent

    def check_prompt(self, prompt: str, *, what: str = "prompt") -> str:
        if not prompt.strip():
            raise UsageError(f"the {what} is empty")
        if "\x00" in prompt:
            raise UsageError(f"the {what} contains a NUL character")
        if len(prompt) > self.max_prompt_chars:
            raise UsageError(f"the {what} has {len(prompt):,} characters; the limit is "
                             f"{self.max_prompt_chars:,}")
        return prompt

    def check(
        self,
        *,
        prompt: str,
        aspect_ratio: str,
        num_images: int,
        seed: int | None = None,
        negative_prompt: str | None = None,
        resolution: str | None = None,
    ) -> None:
        """Raise UsageError for the first value this endpoint would refuse."""
        self.check_prompt(prompt)
        if aspect_ratio not in self.aspect_ratios:
            raise UsageError(f"aspect ratio {aspect_ratio!r} is not one of "
                             f"{', '.join(self.aspect_ratios)}")
        if not 1 <= num_images <= self.max_images:
            raise UsageError(f"--num-images must be 1 to {self.max_images}, not {num_images}")
        if resolution is not None and resolution not in self.resolutions:
            raise UsageError(f"resolution {resolution!r} is not one of "
                             f"{', '.join(self.resolutions)}")
        if seed is not None and not 0 <= seed < self.seeds:
            raise UsageError(f"seed must be between 0 and {self.seeds - 1}")
        if negative_prompt is not None:
            self.check_prompt(negative_prompt, what="negative prompt")

    def arguments(
        self,
        *,
        prompt: str,
        aspect_ratio: str,
        num_images: int,
        seed: int | None = None,
        negative_prompt: str | None = None,
        resolution: str | None = None,
    ) -> dict[str, Any]:
        """fal's input for checked values, in `fields` order; an optional field only when set."""
        values: dict[str, Any] = {
            "prompt": prompt, "aspect_ratio": aspect_ratio, "num_images": num_images,
            "seed": seed, "negative_prompt": negative_prompt, "resolution": resolution}
        return {name: values[name] for name in self.fields
                if not (name in self.optional and values[name] is None)}

IMAGEN4_PREVIEW = Endpoint(
    "fal-ai/imagen4/preview",
    fields=("prompt", "aspect_ratio", "num_images", "seed", "negative_prompt", "resolution"),
    optional=("seed", "negative_prompt", "resolution"),
    aspect_ratios=("1:1", "16:9", "9:16", "3:4", "4:3"),
    resolutions=("1K", "2K"),
    max_images=4,
    max_prompt_chars=4000,
    seeds=2**32,
    default_aspect_ratio="1:1",
    default_num_images=1,
    default_resolution="1K",
)
DEFAULT_ENDPOINT = IMAGEN4_PREVIEW.id  # IMAGEN4_MODEL's default

ENDPOINTS: dict[str, Endpoint] = {endpoint.id: endpoint for endpoint in (IMAGEN4_PREVIEW,)}
