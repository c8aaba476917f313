"""`--json` output: written by orjson, exactly as the json module would have written it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from imagen4ctl.output import json_text


def stdlib(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# Floats outside [1e-4, 1e16) are the one documented difference in spelling.
floats = (st.floats(min_value=1e-4, max_value=1e15) | st.floats(min_value=-1e15, max_value=-1e-4)
          | st.sampled_from([0.0, -0.0]))
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | floats | st.text())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.integers(-3, 3), inner, max_size=4), max_leaves=20)


@given(values)
def test_json_output_is_byte_for_byte_what_the_json_module_writes(value: Any) -> None:
    assert json_text(value) == stdlib(value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_float_reads_back_the_same(value: float) -> None:
    assert json.loads(json_text({"x": value})) == json.loads(stdlib({"x": value}))


@dataclass
class Point:
    x: int


def test_what_json_cannot_write_goes_through_str_as_before() -> None:
    value = {"at": datetime(2026, 11, 26, 9, 0, tzinfo=UTC), "point": Point(3),
             "ids": {7: "seven"}}
    assert json_text(value) == stdlib(value)
    assert json_text({"at": value["at"]}) == '{\n  "at": "2026-11-26 09:00:00+00:00"\n}'
    assert json_text({"big": [2**70]}) == stdlib({"big": [2**70]})  # beyond orjson's 64 bits
