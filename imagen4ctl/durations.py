"""Durations and sizes as people type them (`10m`, `33h 4m`, `50MB`) and as we show them."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(text: str) -> float:
    """Seconds in `text`: a plain number of seconds, or parts like `1h30m`, `33h 4m`, `90s`.

    Raises ValueError with a message that can be shown as it is.
    """
    cleaned = text.strip().lower()
    if not cleaned:
        raise ValueError("empty duration (use e.g. 10m, 1h30m, 90s)")
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _PART.findall(cleaned)
        if not parts or _PART.sub("", cleaned).strip():
            raise ValueError(
                f"{text!r} is not a duration (use e.g. 10m, 1h30m, 90s)"
            ) from None
        seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a duration (it must be 0 or more)")
    return seconds


def format_duration(seconds: float) -> str:
    """`33h 4m`, `4m 10s`, `12s`: the two largest units, as an operator reads an age.

    Hours go up to 96 before days take over: "33h 4m" reads better than "1d 9h".
    """
    total = max(0, int(seconds))
    if total >= 96 * 3600:
        days, rest = divmod(total, 86400)
        return f"{days}d {rest // 3600}h" if rest >= 3600 else f"{days}d"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def parse_size(text: str) -> int:
    """Bytes in `text`: `52428800`, `50MB`, `50MiB`. Raises ValueError."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (use e.g. 50MB or a number of bytes)")
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[(unit or "b").lower()])
    if size <= 0:
        raise ValueError(f"{text!r} is not a size (it must be more than 0)")
    return size
