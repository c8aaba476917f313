"""`imagen4ctl db upgrade|current`: the schema, through Alembic."""

from __future__ import annotations

import typer

from imagen4ctl.context import AppContext
from imagen4ctl.output import console


def upgrade(ctx: typer.Context) -> None:
    """Create or upgrade the generations table (adopting one the bot made).

    Example: imagen4ctl db upgrade
    """
    from imagen4ctl.services import schema

    app = AppContext.from_typer(ctx)
    result = schema.upgrade(app.database)
    where = result.database
    if result.adopted:
        console.print(f"adopted the existing generations table in {where}")
    if result.before == result.after:
        console.print(f"{where} is up to date (revision {result.after})")
    else:
        console.print(f"upgraded {where}: {result.before or 'empty'} → {result.after}")


def current(ctx: typer.Context) -> None:
    """Print the schema revision of the database (and the one imagen4ctl needs).

    Example: imagen4ctl db current
    """
    from imagen4ctl.services import schema

    app = AppContext.from_typer(ctx)
    state = schema.current(app.database)
    status = "up to date" if state.up_to_date else f"behind (head is {state.head})"
    console.print(f"{state.current or 'none'} ({status})")
