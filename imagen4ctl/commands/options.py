"""Options that several commands take, and how their values are read, in one place."""

from __future__ import annotations

from typing import Annotated

import typer

from imagen4ctl.durations import parse_duration
from imagen4ctl.errors import UsageError

TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", min=0.1, show_default=False,
                 help="Deadline in seconds for the whole command, submission included "
                 "(default: IMAGEN4_TIMEOUT, 5m)."),
]
UserIdOption = Annotated[
    str | None,
    typer.Option("--user-id", show_default=False,
                 help="Whose generation it is (default: IMAGEN4_USER_ID)."),
]
UserFilterOption = Annotated[str | None, typer.Option("--user-id", show_default=False)]


def resolve_user_id(user_id: str | None, default: str | None) -> str:
    """--user-id, else IMAGEN4_USER_ID: a generation always has an owner."""
    chosen = user_id if user_id is not None else default
    if chosen is None:
        raise UsageError("no user id: pass --user-id or set IMAGEN4_USER_ID")
    return chosen


def parse_duration_option(value: str | None, option: str, default: float) -> float:
    """A duration typed on the command line; a bad one is a usage error (exit 2)."""
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=option) from None
