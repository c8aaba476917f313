"""What a run of `imagen4ctl` does before and after its command, only to start and end sooner.

Each measure and the time it saves are measured in bench/PERF.md (`python bench/startup.py`,
`python bench/batch.py`); none changes what a command does.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

# Root options that may come before the command, and whether each takes a value. One left
# out here only costs speed: the whole CLI is then built, as for anything unrecognised.
_ROOT_OPTIONS = {"--env-file": True, "--debug": False}


def refuse_unused_imports() -> None:
    """Two optional imports of libraries below imagen4ctl are refused in this process; each
    library then leaves the feature out."""
    # httpcore (under fal_client and httpx) imports trio whenever it is installed, for trio
    # event loops: ~0.1 s before a batch's first submission, and imagen4ctl runs no event
    # loop of trio's.
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    # httpx imports its own command-line client (Click, Pygments, Rich's syntax and progress)
    # whenever Click is installed, which any other package may bring: ~45 ms. It falls back
    # to a stub when that import fails; imagen4ctl never runs it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def invoked_command(args: Sequence[str], commands: Collection[str]) -> str | None:
    """The command (one of `commands`) that `args` ask for, when nothing else (help, version,
    completion, a typo) needs the whole CLI; None otherwise."""
    position = 0
    while position < len(args):
        arg = args[position]
        name, equals, _ = arg.partition("=")
        if name in _ROOT_OPTIONS:
            position += 1 if equals or not _ROOT_OPTIONS[name] else 2
            continue
        return arg if arg in commands else None
    return None


def run(app: typer.Typer, build_alone: Callable[[str], typer.Typer],
        commands: Collection[str]) -> None:
    """Run the CLI on `sys.argv`: the command asked for built alone, or else the whole `app`.

    Typer turns the signature of every registered command into options at each start, before
    it looks at which command was asked for: ~25 ms for all of them, each run.
    """
    refuse_unused_imports()
    command = invoked_command(sys.argv[1:], commands)
    try:
        (app if command is None else build_alone(command))(prog_name="imagen4ctl")
    finally:
        # At exit the collector passes over every object still loaded (SQLAlchemy, pydantic,
        # Rich…): ~0.1 s after a batch. Nothing is left to collect that matters; skip them.
        gc.freeze()
