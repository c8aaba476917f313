"""`imagen4ctl db upgrade|current`: the schema, through Alembic."""

from __future__ import annotations

import typer

from imagen4ctl.context import AppContext
from imagen4ctl.output import console


def upgrade(ctx: typer.Context) -> None:
    """Create or upgrade the generations table (adopting one the bot made).

    Example: imagen4ctl db upgrade
    """
    from imagen4ctl.db import migrate

    app = AppContext.from_typer(ctx)
    result = migrate.upgrade(app.database)
    where = app.database.describe()
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
    from imagen4ctl.db import migrate

    app = AppContext.from_typer(ctx)
    state = migrate.schema_state(app.database)
    status = "up to date" if state.up_to_date else f"behind (head is {state.head})"
    console.print(f"{state.current or 'none'} ({status})")
