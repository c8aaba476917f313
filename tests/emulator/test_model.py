"""The Imagen 4 request rules the emulator checks, on their own: every bad field reported at
once, like fal's pydantic."""

from __future__ import annotations

from imagen4ctl.emulator.model import validate
from imagen4ctl.endpoints import IMAGEN4_FAST, IMAGEN4_PREVIEW


def test_validation_reports_every_bad_field_like_pydantic() -> None:
    spec, errors = validate({"prompt": 3, "aspect_ratio": "2:1", "num_images": 0,
                             "seed": "x", "resolution": "4K"}, IMAGEN4_PREVIEW)
    assert spec is None
    assert [(e["loc"][1], e["type"]) for e in errors] == [
        ("prompt", "string_type"), ("aspect_ratio", "literal_error"),
        ("num_images", "greater_than_equal"), ("seed", "int_type"),
        ("resolution", "literal_error")]
    assert errors[1]["msg"] == "Input should be '1:1', '16:9', '9:16', '4:3' or '3:4'"
    assert validate(["not", "an", "object"], IMAGEN4_PREVIEW)[1][0]["loc"] == ["body"]
    spec, errors = validate({"prompt": "ok", "num_images": 4}, IMAGEN4_PREVIEW)
    assert errors == [] and spec is not None and spec.num_images == 4 and spec.seed is None


def test_a_field_the_endpoint_does_not_take_is_refused_after_the_others() -> None:
    """Chosen where fal is silent: refused ("extra_forbidden"), never silently ignored."""
    spec, errors = validate({"extra": True, "prompt": "", "resolution": "2K"}, IMAGEN4_FAST)
    assert spec is None
    assert [(e["loc"][1], e["type"]) for e in errors] == [
        ("prompt", "string_too_short"), ("extra", "extra_forbidden"),
        ("resolution", "extra_forbidden")]
    assert errors[1]["msg"] == "Extra inputs are not permitted"


def test_fast_makes_1k_images_and_the_defaults_are_fals() -> None:
    spec, errors = validate({"prompt": "ok"}, IMAGEN4_FAST)
    assert errors == [] and spec is not None
    assert (spec.resolution, spec.output_format, spec.safety_tolerance, spec.sync_mode) == (
        "1K", "png", "4", False)
