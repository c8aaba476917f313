"""The error contract every command runs under: one line, an exit code, no traceback.

An `Imagen4ctlError` becomes `error:`/`hint:` lines on stderr and its exit code; anything
unexpected becomes one line too, unless `--debug` asked for the traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from imagen4ctl.errors import Imagen4ctlError
from imagen4ctl.output import print_error

F = TypeVar("F", bound=Callable[..., Any])
_debug = False


def show_tracebacks(debug: bool) -> None:
    """`--debug`: let errors through with their traceback instead of one line."""
    global _debug
    _debug = debug


def with_readme(error: Imagen4ctlError) -> str:
    """The hint, and the README section that explains the error."""
    where = f"README.md#{error.readme}"
    return f"{error.hint} (see {where})" if error.hint else f"see {where}"


def guarded(fn: F) -> F:
    """Run a command with imagen4ctl's error contract: one line, an exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise  # Typer renders these itself (usage errors exit 2)
        except Imagen4ctlError as e:
            if _debug:
                raise
            print_error(e.message, with_readme(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None
        except Exception as e:  # a bug: still one line for the user, the rest with --debug
            if _debug:
                raise
            print_error(f"unexpected {type(e).__name__}: {e}",
                        "Rerun with --debug for the traceback, and report it.")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
