"""The Imagen 4 app behind the emulated queue: its input schema, checked the way fal checks it.

fal apps validate with pydantic, so a bad input ends as a 422 whose `detail` is a list of
`{loc, msg, type}` objects (plus `input` and `ctx`), which this module reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagen4ctl.emulator.images import RESOLUTION_SCALE

# In the order of fal's schema, which is the order pydantic lists them in its messages.
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "3:4", "4:3")
RESOLUTIONS = tuple(RESOLUTION_SCALE)
MAX_IMAGES = 4

ValidationError = dict[str, Any]


@dataclass(frozen=True)
class Imagen4Input:
    prompt: str
    negative_prompt: str = ""
    aspect_ratio: str = "1:1"
    num_images: int = 1
    seed: int | None = None
    resolution: str = "1K"


def _literal_message(options: tuple[str, ...]) -> str:
    quoted = [f"'{option}'" for option in options]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def _error(field: str, msg: str, kind: str, value: Any, **ctx: Any) -> ValidationError:
    error: ValidationError = {"loc": ["body", field], "msg": msg, "type": kind, "input": value}
    if ctx:
        error["ctx"] = ctx
    return error


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_string(body: dict[str, Any], field: str, errors: list[ValidationError]) -> None:
    if field in body and not isinstance(body[field], str):
        errors.append(_error(field, "Input should be a valid string", "string_type", body[field]))


def _check_literal(body: dict[str, Any], field: str, options: tuple[str, ...],
                   errors: list[ValidationError]) -> None:
    if field in body and body[field] not in options:
        expected = _literal_message(options)
        errors.append(_error(field, f"Input should be {expected}", "literal_error", body[field],
                             expected=expected))


def validate(body: Any) -> tuple[Imagen4Input | None, list[ValidationError]]:
    """The parsed input, or None and every error (pydantic reports all fields at once)."""
    if not isinstance(body, dict):
        return None, [{
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "type": "model_attributes_type",
            "input": body,
        }]
    errors: list[ValidationError] = []
    if "prompt" not in body:
        errors.append({"loc": ["body", "prompt"], "msg": "Field required", "type": "missing",
                       "input": body})
    elif not isinstance(body["prompt"], str):
        _check_string(body, "prompt", errors)
    elif not body["prompt"]:
        errors.append(_error("prompt", "String should have at least 1 character",
                             "string_too_short", body["prompt"], min_length=1))
    _check_string(body, "negative_prompt", errors)
    _check_literal(body, "aspect_ratio", ASPECT_RATIOS, errors)
    if "num_images" in body:
        count = body["num_images"]
        if not _is_int(count):
            errors.append(_error("num_images", "Input should be a valid integer", "int_type",
                                 count))
        elif count < 1:
            errors.append(_error("num_images", "Input should be greater than or equal to 1",
                                 "greater_than_equal", count, ge=1))
        elif count > MAX_IMAGES:
            errors.append(_error("num_images",
                                 f"Input should be less than or equal to {MAX_IMAGES}",
                                 "less_than_equal", count, le=MAX_IMAGES))
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        errors.append(_error("seed", "Input should be a valid integer", "int_type", seed))
    _check_literal(body, "resolution", RESOLUTIONS, errors)
    if errors:
        return None, errors
    return Imagen4Input(
        prompt=body["prompt"],
        negative_prompt=body.get("negative_prompt", ""),
        aspect_ratio=body.get("aspect_ratio", "1:1"),
        num_images=body.get("num_images", 1),
        seed=seed,
        resolution=body.get("resolution", "1K"),
    ), []
