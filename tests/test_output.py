"""`--json` output, written by orjson exactly as the json module would have written it; colour
only on a terminal and without NO_COLOR; a batch's progress bar, or a few lines in a pipe."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from imagen4ctl import output
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


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagen4ctl", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_no_color_turns_off_all_styling_even_on_a_forced_terminal() -> None:
    styled = run("check-config", "--offline", FORCE_COLOR="1")
    assert "\x1b[" in styled.stdout  # the check can fail: styling is there without NO_COLOR
    plain = run("check-config", "--offline", FORCE_COLOR="1", NO_COLOR="1")
    assert "\x1b[" not in plain.stdout + plain.stderr


def test_piped_output_is_plain() -> None:
    result = run("check-config", "--offline")
    assert "\x1b[" not in result.stdout + result.stderr
    assert result.stdout.startswith("✗ fal_credentials: no fal key")


def test_a_batch_has_a_bar_on_a_terminal_and_a_few_lines_in_a_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    for terminal in (True, False):
        stream = io.StringIO()
        monkeypatch.setattr(output, "err_console",
                            Console(file=stream, force_terminal=terminal, width=80))
        with output.progress_bar(3, "batch of 3") as advance:
            for n in range(3):
                advance(f"generation {n} COMPLETED")
        text = stream.getvalue()
        if terminal:
            assert "batch of 3" in text and "3/3" in text and "[3/3]" not in text
        else:
            assert text.splitlines() == [f"[{n}/3] generation {n - 1} COMPLETED"
                                         for n in (1, 2, 3)]
