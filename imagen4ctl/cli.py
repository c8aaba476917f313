"""Builds the Typer app and registers the commands — nothing else.

Every command runs under one error contract (`commands/_guard.py`); what a run does to start
sooner is in `startup.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from imagen4ctl import __version__, startup
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
    models,
    reconcile,
    seed_gallery,
    user_images,
    worker,
)
from imagen4ctl.commands._guard import guarded, show_tracebacks
from imagen4ctl.context import AppContext
from imagen4ctl.output import register_secrets
from imagen4ctl.settings import Settings


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
    show_tracebacks(debug)
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
    "models": models.models,
    "seed-gallery": seed_gallery.seed_gallery,
    "fix-pending": fix_pending.fix_pending,
    "reconcile": reconcile.reconcile,
    "worker": worker.worker,
    "gallery": gallery.gallery,
    "emulator": emulator.emulator,
    "health": health.health,
    "metrics": metrics.metrics,
}
_COMMAND_CLASSES: dict[str, Any] = {"health": health.HealthCommand}
GROUPS: dict[str, Callable[[], typer.Typer]] = {"db": _db_app}


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI; with `only`, that command alone under the same root options."""
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


def main() -> None:
    """The `imagen4ctl` console script and `python -m imagen4ctl`."""
    startup.run(app, build_app, commands=[*COMMANDS, *GROUPS])


if __name__ == "__main__":  # pragma: no cover
    main()
