from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagen4ctl.durations import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("33h 4m", 119040), ("90", 90),
                                               ("1h30m", 5400), ("2d", 172800), ("0", 0),
                                               ("1.5s", 1.5)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5m", "10x", "m", "5 minutes", "1h-2m", "nan", "inf"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (119040, "33h 4m"), (1800, "30m"), (1805, "30m 5s"), (7200, "2h"), (5, "5s"),
    (90000, "25h"), (345600, "4d"), (400000, "4d 15h"), (-3, "0s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**7))
def test_format_then_parse_keeps_the_leading_units(seconds: int) -> None:
    shown = format_duration(seconds)
    assert 0 <= seconds - parse_duration(shown) < 3600


@pytest.mark.parametrize(("text", "size"), [("50MB", 50_000_000), ("50MiB", 52_428_800),
                                            ("1024", 1024)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size
