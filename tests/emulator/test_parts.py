"""The emulator's pieces on their own: fault grammar, Imagen 4 validation, images, log."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from imagen4ctl.emulator import (
    IMAGEN4_SIZES,
    FaultSpecError,
    fingerprint,
    image_size,
    parse_faults,
)
from imagen4ctl.emulator.faults import Fault, faults_in_prompt
from imagen4ctl.emulator.images import PNG_SIGNATURE, padded_png, png_header, render_png
from imagen4ctl.emulator.model import ASPECT_RATIOS, validate


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("submit=429x3", Fault("submit", "http", code=429, times=3)),
        ("status = ingress503", Fault("status", "ingress", code=503)),
        ("result=malformed", Fault("result", "malformed")),
        ("file=dropx1", Fault("file", "drop", times=1)),
        ("file=notimage", Fault("file", "notimage")),
        ("file=slow:2.5", Fault("file", "slow", seconds=2.5)),
        ("file=large:60MB", Fault("file", "large", size=60_000_000)),
        ("run=error", Fault("run", "error", error_type="runner_disconnected")),
        ("run=error:request_timeout", Fault("run", "error", error_type="request_timeout")),
        ("run=hang", Fault("run", "hang")),
        ("latency=4", Fault("latency", "latency", seconds=4.0)),
    ],
)
def test_fault_grammar(spec: str, fault: Fault) -> None:
    plan = parse_faults(spec)
    assert plan.faults == (fault,)
    assert parse_faults(plan.describe()) == plan


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("submit", "expected POINT=ACTION"),
        ("queue=500", "unknown point 'queue'"),
        ("submit=200", "code of 400 or more"),
        ("file=malformed", "unknown action"),
        ("run=hangx2", "only HTTP points take a count"),
        ("latency=soon", "not a number of seconds"),
        ("file=large:lots", "not a size"),
    ],
)
def test_bad_fault_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_faults(spec)


@given(st.text(max_size=40))
def test_any_text_either_parses_or_raises_fault_spec_error(text: str) -> None:
    try:
        parse_faults(text)
    except FaultSpecError:
        pass


def test_prompt_directives_merge_point_by_point() -> None:
    plan = faults_in_prompt("a cat [fault:submit=500,file=404] on a mat [FAULT:submit=429x2]")
    assert plan.describe() == "file=404,submit=429x2"
    assert not faults_in_prompt("a cat on a mat")


def test_validation_reports_every_bad_field_like_pydantic() -> None:
    spec, errors = validate({"prompt": 3, "aspect_ratio": "2:1", "num_images": 0,
                             "seed": "x", "resolution": "4K"})
    assert spec is None
    assert [(e["loc"][1], e["type"]) for e in errors] == [
        ("prompt", "string_type"), ("aspect_ratio", "literal_error"),
        ("num_images", "greater_than_equal"), ("seed", "int_type"),
        ("resolution", "literal_error")]
    assert errors[1]["msg"] == "Input should be '1:1', '16:9', '9:16', '3:4' or '4:3'"
    assert validate(["not", "an", "object"])[1][0]["loc"] == ["body"]
    spec, errors = validate({"prompt": "ok", "num_images": 4, "extra": True})
    assert errors == [] and spec is not None and spec.num_images == 4 and spec.seed is None


def test_images_are_real_deterministic_pngs() -> None:
    data = render_png("3:4", "1K", 7, 0)
    assert data == render_png("3:4", "1K", 7, 0)
    assert data != render_png("3:4", "1K", 7, 1)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (896, 1280) == image_size("3:4")
    assert image_size("16:9", "2K") == (2816, 1536)
    assert set(IMAGEN4_SIZES) == set(ASPECT_RATIOS)


def test_padded_png_has_a_sniffable_header_and_the_exact_size() -> None:
    pieces = list(padded_png(1024, 1024, 200_000, chunk_size=65_536))
    data = b"".join(pieces)
    assert len(data) == 200_000 and max(len(p) for p in pieces) <= 65_536
    assert data.startswith(png_header(1024, 1024)) and data.startswith(PNG_SIGNATURE)
    assert b"".join(padded_png(10, 10, 5)) == PNG_SIGNATURE[:5]


def test_fingerprints_are_short_stable_and_keyless() -> None:
    key = "abc123:supersecret"
    assert fingerprint(key) == fingerprint(key) != fingerprint("abc123:supersecreT")
    assert len(fingerprint(key)) == 12
    assert "supersecret" not in fingerprint(key)
