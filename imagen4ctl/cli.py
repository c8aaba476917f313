"""Builds the Typer app and registers the commands — nothing else.

Errors are translated once, here: an `Imagen4ctlError` becomes `error:`/`hint:` lines on
stderr and its exit code; anything unexpected becomes one line too, unless `--debug`.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from imagen4ctl import __version__
from imagen4ctl.commands import (
    check_config,
    db,
    demo,
    emulator,
    fix_pending,
    gallery,
    generate,
    health,
    metrics,
    reconcile,
    seed_gallery,
    user_images,
)
from imagen4ctl.context import AppContext
from imagen4ctl.errors import Imagen4ctlError
from imagen4ctl.output import print_error, register_secrets
from imagen4ctl.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
_debug = False


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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imagen4ctl {__version__}")
        raise typer.Exit()


@guarded
def root(
    ctx: typer.Context,
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="Read variables from this file (default: ./.env if "
                     "present). The environment wins over it.", show_default=False),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    global _debug
    _debug = debug
    if ctx.resilient_parsing:
        return
    settings = Settings.load(env_file)
    register_secrets(settings.secret_values())
    ctx.obj = AppContext(settings, debug=debug)


def _db_app() -> typer.Typer:
    db_app = typer.Typer(help="Database schema: create, upgrade, show the revision.",
                         no_args_is_help=True)
    db_app.command("upgrade")(guarded(db.upgrade))
    db_app.command("current")(guarded(db.current))
    return db_app


# Every command, in the order of `--help`, then the groups of commands.
COMMANDS: dict[str, Callable[..., Any]] = {
    "demo": demo.demo,
    "check-config": check_config.check_config,
    "user-images": user_images.user_images,
    "generate": generate.generate,
    "seed-gallery": seed_gallery.seed_gallery,
    "fix-pending": fix_pending.fix_pending,
    "reconcile": reconcile.reconcile,
    "gallery": gallery.gallery,
    "emulator": emulator.emulator,
    "health": health.health,
    "metrics": metrics.metrics,
}
_COMMAND_CLASSES: dict[str, Any] = {"health": health.HealthCommand}
GROUPS: dict[str, Callable[[], typer.Typer]] = {"db": _db_app}


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI; with `only`, that command alone under the same root options.

    Typer turns the signature of every registered command into options at each start, before
    it looks at which command was asked for: ~25 ms for all of them, each run.
    """
    app = typer.Typer(
        name="imagen4ctl",
        help="Operate an Imagen 4 image service on fal.ai: config, generation, stats, recovery.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root)
    for name, command in COMMANDS.items():
        if only in (None, name):
            app.command(name, cls=_COMMAND_CLASSES.get(name))(guarded(command))
    for name, group in GROUPS.items():
        if only in (None, name):
            app.add_typer(group(), name=name)
    return app


app = build_app()
# Root options that may come before the command, and whether each takes a value. One left
# out here only costs speed: the whole CLI is then built, as for anything unrecognised.
_ROOT_OPTIONS = {"--env-file": True, "--debug": False}


def invoked_command(args: list[str]) -> str | None:
    """The command `args` ask for, when nothing else (help, version, completion, a typo)
    needs the whole CLI; None otherwise."""
    position = 0
    while position < len(args):
        arg = args[position]
        name, equals, _ = arg.partition("=")
        if name in _ROOT_OPTIONS:
            position += 1 if equals or not _ROOT_OPTIONS[name] else 2
            continue
        return arg if arg in COMMANDS or arg in GROUPS else None
    return None


def main() -> None:
    # Two optional imports of libraries below imagen4ctl are refused in this process; each
    # library then leaves the feature out. httpcore (under fal_client and httpx) imports trio
    # whenever it is installed, for trio event loops: ~0.1 s before a batch's first
    # submission, and imagen4ctl runs no event loop of trio's.
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    # httpx imports its own command-line client (Click, Pygments, Rich's syntax and progress)
    # whenever Click is installed, which any other package may bring: ~45 ms. It falls back
    # to a stub when that import fails; imagen4ctl never runs it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    command = invoked_command(sys.argv[1:])
    try:
        (app if command is None else build_app(only=command))(prog_name="imagen4ctl")
    finally:
        # At exit the collector passes over every object still loaded (SQLAlchemy, pydantic,
        # Rich…): ~0.1 s after a batch. Nothing is left to collect that matters; skip them.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
