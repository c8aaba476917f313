"""The Imagen 4 endpoints at fal and the input each takes, keyed by fal endpoint id.

One registry drives `generate`'s and `seed-gallery`'s checks (a value fal would refuse is
refused before a row is written, without paying for a 422), the emulator's validation of the
same input, the help of the options and `imagen4ctl models`. Pure (standard library and
`imagen4ctl.errors` only): the emulator and every start-up import it.

The schemas follow fal-js's generated endpoint types as of 2026-04-07 (commit 9830f25), the
newest that still has Imagen 4: fal-js 381105e (2026-08-02) removed them, without a word from
fal (README: "What is not verified against fal"). Where fal states no limit (the number of
images since 2025-12, the prompt's length, the seed's range) the limit is imagen4ctl's own,
listed there too.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from imagen4ctl.errors import UsageError

FAL_JS_TYPES = ("https://github.com/fal-ai/fal-js/blob/9830f25d025218a0d5eb684ab5193cad58d95955/"
                "libs/client/src/types/endpoints.ts")
MODELS_HINT = "`imagen4ctl models` lists what each endpoint takes."


@dataclass(frozen=True)
class Field:
    """One input field as fal's schema types it; `choices` in fal's order."""

    name: str
    kind: Literal["string", "integer", "boolean"]
    choices: tuple[str, ...] = ()
    default: str | int | bool | None = None
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None
    required: bool = False
    nullable: bool = False

    def describe(self) -> str:
        """The values it takes, for a person: "1K or 2K", "1 to 4", "integer"."""
        if self.choices:
            return ", ".join(self.choices[:-1]) + f" or {self.choices[-1]}" \
                if len(self.choices) > 1 else self.choices[0]
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum} to {self.maximum}"
        return self.kind

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.kind}
        if self.choices:
            data["choices"] = list(self.choices)
        if self.minimum is not None:
            data["min"] = self.minimum
        if self.maximum is not None:
            data["max"] = self.maximum
        if self.default is not None:
            data["default"] = self.default
        return data


# fal-js 9830f25, `Imagen4PreviewInput` (line 18696) and `Imagen4PreviewFastInput` (18666).
# The types list fields alphabetically; this is the order imagen4ctl sends them in.
PROMPT = Field("prompt", "string", required=True, min_length=1)
ASPECT_RATIO = Field("aspect_ratio", "string", ("1:1", "16:9", "9:16", "4:3", "3:4"), "1:1")
# fal: "The number of images to generate. Default value: `1`", no range since 2025-12-15;
# before that "(1-4)". Not verified against fal for the 2026 schema.
NUM_IMAGES = Field("num_images", "integer", default=1, minimum=1, maximum=4)
SEED = Field("seed", "integer", nullable=True)
RESOLUTION = Field("resolution", "string", ("1K", "2K"), "1K")
OUTPUT_FORMAT = Field("output_format", "string", ("jpeg", "png", "webp"), "png")
SAFETY_TOLERANCE = Field("safety_tolerance", "string", ("1", "2", "3", "4", "5", "6"), "4")
SYNC_MODE = Field("sync_mode", "boolean", default=False)


@dataclass(frozen=True)
class Endpoint:
    """One fal endpoint: the fields it takes (any other is refused), and where that is said."""

    id: str
    title: str
    fields: tuple[Field, ...]
    sources: tuple[str, ...]
    max_prompt_chars: int = 4000  # imagen4ctl's own bound: fal states none
    seeds: int = 2**32  # a seed is 0 <= seed < seeds; imagen4ctl's own bound: fal states none

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def takes(self, name: str) -> bool:
        return self.field(name) is not None

    def require(self, name: str) -> Field:
        """The field `name`, which this endpoint is known to take."""
        found = self.field(name)
        assert found is not None, f"{self.id} has no {name}"
        return found

    @property
    def aspect_ratios(self) -> tuple[str, ...]:
        return self.require("aspect_ratio").choices

    @property
    def default_aspect_ratio(self) -> str:
        return str(self.require("aspect_ratio").default)

    @property
    def max_images(self) -> int:
        return self.require("num_images").maximum or 1

    @property
    def default_num_images(self) -> int:
        return int(self.require("num_images").default or 1)

    @property
    def resolutions(self) -> tuple[str, ...]:
        """Empty when the endpoint takes no `resolution`."""
        found = self.field("resolution")
        return found.choices if found is not None else ()

    @property
    def default_resolution(self) -> str | None:
        found = self.field("resolution")
        return None if found is None else str(found.default)

    def check_prompt(self, prompt: str, *, what: str = "prompt") -> str:
        if not prompt.strip():
            raise UsageError(f"the {what} is empty")
        if "\x00" in prompt:
            raise UsageError(f"the {what} contains a NUL character")
        if len(prompt) > self.max_prompt_chars:
            raise UsageError(f"the {what} has {len(prompt):,} characters; the limit is "
                             f"{self.max_prompt_chars:,}")
        return prompt

    def _refuse_untaken(self, name: str) -> None:
        option = "--" + name.replace("_", "-")
        taking = [e.id for e in ENDPOINTS.values() if e.takes(name)]
        where = f"{_join(taking)} take{'s' if len(taking) == 1 else ''} it" if taking \
            else "No current Imagen 4 endpoint at fal takes it"
        raise UsageError(f"{self.id} does not take {option}", hint=f"{where}; {MODELS_HINT}")

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
        """Raise UsageError for the first value this endpoint would refuse, or not take."""
        self.check_prompt(prompt)
        if aspect_ratio not in self.aspect_ratios:
            raise UsageError(f"aspect ratio {aspect_ratio!r} is not one of "
                             f"{', '.join(self.aspect_ratios)}")
        if not 1 <= num_images <= self.max_images:
            raise UsageError(f"--num-images must be 1 to {self.max_images}, not {num_images}")
        if resolution is not None:
            if not self.takes("resolution"):
                self._refuse_untaken("resolution")
            if resolution not in self.resolutions:
                raise UsageError(f"resolution {resolution!r} is not one of "
                                 f"{', '.join(self.resolutions)}")
        if seed is not None and not 0 <= seed < self.seeds:
            raise UsageError(f"seed must be between 0 and {self.seeds - 1}")
        if negative_prompt is not None:
            if not self.takes("negative_prompt"):
                self._refuse_untaken("negative_prompt")
            self.check_prompt(negative_prompt, what="negative prompt")

    def arguments(self, **values: Any) -> dict[str, Any]:
        """fal's input for checked values, in `fields` order; a value left None is not sent."""
        unknown = {name for name, value in values.items() if value is not None} - {
            f.name for f in self.fields}
        assert not unknown, f"{self.id} does not take {sorted(unknown)} (check() first)"
        return {f.name: values[f.name] for f in self.fields if values.get(f.name) is not None}

    def to_json(self) -> dict[str, Any]:
        """What `imagen4ctl models` shows: the options a person picks, then every other."""
        shown = {"prompt", "aspect_ratio", "num_images", "resolution"}
        num_images = self.require("num_images")
        return {
            "endpoint": self.id,
            "title": self.title,
            "aspect_ratios": list(self.aspect_ratios),
            "images_per_request": {"min": num_images.minimum, "max": num_images.maximum,
                                   "default": num_images.default},
            "resolutions": list(self.resolutions),
            "other_options": {f.name: f.to_json() for f in self.fields if f.name not in shown},
            "sources": list(self.sources),
        }


_COMMON = (PROMPT, ASPECT_RATIO, NUM_IMAGES, SEED)
_FORMAT = (OUTPUT_FORMAT, SAFETY_TOLERANCE, SYNC_MODE)
_PAGE = "https://fal.ai/models/{}/api"

# fal-js 9830f25: `Imagen4PreviewInput` (line 18696); fal's page lists the same fields.
IMAGEN4_PREVIEW = Endpoint(
    "fal-ai/imagen4/preview", "Imagen 4",
    fields=(*_COMMON, RESOLUTION, *_FORMAT),
    sources=(f"{FAL_JS_TYPES}#L18696", _PAGE.format("fal-ai/imagen4/preview")),
)
# fal-js 9830f25: `Imagen4PreviewFastInput` (line 18666): the same fields but `resolution`.
IMAGEN4_FAST = Endpoint(
    "fal-ai/imagen4/preview/fast", "Imagen 4 Fast",
    fields=(*_COMMON, *_FORMAT),
    sources=(f"{FAL_JS_TYPES}#L18666", _PAGE.format("fal-ai/imagen4/preview/fast")),
)
# fal-js 9830f25: `type Imagen4PreviewUltraInput = Imagen4PreviewInput` (line 54113).
IMAGEN4_ULTRA = Endpoint(
    "fal-ai/imagen4/preview/ultra", "Imagen 4 Ultra",
    fields=IMAGEN4_PREVIEW.fields,
    sources=(f"{FAL_JS_TYPES}#L54113", _PAGE.format("fal-ai/imagen4/preview/ultra")),
)
DEFAULT_ENDPOINT = IMAGEN4_PREVIEW.id  # IMAGEN4_MODEL's default

ENDPOINTS: dict[str, Endpoint] = {
    endpoint.id: endpoint for endpoint in (IMAGEN4_PREVIEW, IMAGEN4_FAST, IMAGEN4_ULTRA)}


def _join(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def closest(endpoint_id: str) -> str | None:
    """The known id a typo most likely meant, if any is close."""
    found = difflib.get_close_matches(endpoint_id, ENDPOINTS, n=1, cutoff=0.6)
    return found[0] if found else None


def endpoint_named(endpoint_id: str, source: str = "--model") -> Endpoint:
    """The endpoint `source` (an option or setting) names; UsageError for one not known."""
    endpoint = ENDPOINTS.get(endpoint_id)
    if endpoint is not None:
        return endpoint
    guess = closest(endpoint_id)
    raise UsageError(f"{source} {endpoint_id!r} is not an Imagen 4 endpoint imagen4ctl knows "
                     f"({', '.join(ENDPOINTS)})",
                     hint=(f"Did you mean {guess}? " if guess else "") + MODELS_HINT)


def catalogue() -> list[dict[str, Any]]:
    """Every endpoint as `imagen4ctl models` shows it, JSON-ready."""
    return [endpoint.to_json() for endpoint in ENDPOINTS.values()]


def option_help(name: str) -> str:
    """An option's help, from the registry: what it takes, and which endpoints take it."""
    taking = [e for e in ENDPOINTS.values() if e.takes(name)]
    if not taking:
        return f"Taken by no current Imagen 4 endpoint at fal: refused. {MODELS_HINT}"
    described = {e.id: e.require(name).describe() for e in taking}
    if len(set(described.values())) == 1:
        text = next(iter(described.values()))
    else:
        text = "; ".join(f"{value} on {endpoint}" for endpoint, value in described.items())
    others = [e.id for e in ENDPOINTS.values() if not e.takes(name)]
    return f"{text}." + (f" Not taken by {_join(others)}." if others else "")


def model_help() -> str:
    ids = list(ENDPOINTS)
    return (f"The fal endpoint: {', '.join(ids[:-1])} or {ids[-1]} (default: IMAGEN4_MODEL). "
            + MODELS_HINT)
