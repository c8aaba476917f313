"""The Imagen 4 app behind the emulated queue: each endpoint's input, checked the way fal does.

The fields, values and defaults are imagen4ctl's registry (`imagen4ctl/endpoints.py`), which
follows fal-js's endpoint types as of 2026-04-07 (https://github.com/fal-ai/fal-js/blob/
9830f25d025218a0d5eb684ab5193cad58d95955/libs/client/src/types/endpoints.ts): the emulator
cannot accept what the CLI refuses, nor the reverse.

fal apps validate with pydantic, so a bad input ends as a 422 whose `detail` is a list of
`{loc, msg, type}` objects (plus `input` and `ctx`), as fal's webhook page shows
(https://docs.fal.ai/model-endpoints/webhooks: `"detail": [{"loc": ["body", "prompt"], "msg":
"field required", ...}]`), which this module reproduces in pydantic 2's words.

Chosen where fal's material is silent (README: "What is not verified against fal"): a field
the endpoint does not take (e.g. `negative_prompt`, or `resolution` on /fast) is refused
("extra_forbidden") rather than ignored, and `num_images` stops at 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagen4ctl.endpoints import Endpoint, Field

ValidationError = dict[str, Any]


@dataclass(frozen=True)
class Imagen4Input:
    prompt: str
    aspect_ratio: str = "1:1"
    num_images: int = 1
    seed: int | None = None
    resolution: str = "1K"  # what an endpoint without `resolution` (/fast) makes
    output_format: str = "png"
    safety_tolerance: str = "4"
    sync_mode: bool = False


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


def _check(field: Field, value: Any) -> ValidationError | None:
    """Pydantic's first complaint about one present value, if any."""
    name = field.name
    if value is None and field.nullable:
        return None
    if field.kind == "string":
        if not isinstance(value, str):
            return _error(name, "Input should be a valid string", "string_type", value)
        if field.choices and value not in field.choices:
            expected = _literal_message(field.choices)
            return _error(name, f"Input should be {expected}", "literal_error", value,
                          expected=expected)
        if field.min_length is not None and len(value) < field.min_length:
            return _error(name, f"String should have at least {field.min_length} character",
                          "string_too_short", value, min_length=field.min_length)
    elif field.kind == "integer":
        if not _is_int(value):
            return _error(name, "Input should be a valid integer", "int_type", value)
        if field.minimum is not None and value < field.minimum:
            return _error(name, f"Input should be greater than or equal to {field.minimum}",
                          "greater_than_equal", value, ge=field.minimum)
        if field.maximum is not None and value > field.maximum:
            return _error(name, f"Input should be less than or equal to {field.maximum}",
                          "less_than_equal", value, le=field.maximum)
    elif not isinstance(value, bool):
        return _error(name, "Input should be a valid boolean", "bool_type", value)
    return None


def validate(body: Any, endpoint: Endpoint) -> tuple[Imagen4Input | None, list[ValidationError]]:
    """The parsed input, or None and every error (pydantic reports all fields at once, in
    the schema's order, then the fields it does not know)."""
    if not isinstance(body, dict):
        return None, [{
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "type": "model_attributes_type",
            "input": body,
        }]
    errors: list[ValidationError] = []
    for field in endpoint.fields:
        if field.name not in body:
            if field.required:
                errors.append({"loc": ["body", field.name], "msg": "Field required",
                               "type": "missing", "input": body})
        elif (error := _check(field, body[field.name])) is not None:
            errors.append(error)
    for name in body:
        if not endpoint.takes(name):
            errors.append(_error(name, "Extra inputs are not permitted", "extra_forbidden",
                                 body[name]))
    if errors:
        return None, errors
    values: dict[str, Any] = {f.name: body.get(f.name, f.default) for f in endpoint.fields}
    values["resolution"] = values.get("resolution") or "1K"
    return Imagen4Input(**values), []
