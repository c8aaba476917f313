"""`imagen4ctl reconcile`: does the bucket hold what the database says, and nothing else?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imagen4ctl.commands.options import UserFilterOption
from imagen4ctl.context import AppContext
from imagen4ctl.keys import validate_user_id
from imagen4ctl.output import JsonOption, console, print_json

if TYPE_CHECKING:
    from imagen4ctl.services.reconcile import ReconcileReport


def reconcile(
    ctx: typer.Context,
    user_id: UserFilterOption = None,
    kind: Annotated[str, typer.Option("--kind", help="Rows of this kind.")] = "imagen4",
    fix: Annotated[
        bool, typer.Option("--fix", help="Re-fetch from fal, copy fal-hosted images, delete "
                           "orphans older than an hour.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Compare COMPLETED rows with the objects under IMAGES_PREFIX; exit 1 if problems remain.

    Only imagen4ctl's own prefix is listed or touched: the bucket may be shared with the bot.

    Example: imagen4ctl reconcile --fix
    """
    if user_id is not None:
        validate_user_id(user_id)
    report = AppContext.from_typer(ctx).reconciler(kind=kind, user_id=user_id, fix=fix).run()
    if json_out:
        print_json(report.to_json())
    else:
        _render(report)
    raise typer.Exit(0 if report.ok else 1)


def _render(report: ReconcileReport) -> None:
    if report.items:
        table = Table(title_justify="left",
                      title="problems" + (" (after --fix)" if report.fix else ""))
        for column in ("problem", "row", "object", "detail", "fixed"):
            table.add_column(column)
        for p in report.items:
            table.add_row(p.type, str(p.id or "-"), escape(p.key or "-"), escape(p.detail),
                          p.action if report.fix else "-",
                          style=None if p.fixed else "red")
        console.print(table)
    left = len(report.remaining)
    verdict = "in agreement" if not left else f"{left} problem(s) remain"
    console.print(f"{report.rows_checked} rows and {report.objects_checked} objects checked: "
                  f"{verdict}" + ("" if report.fix or not left else " (--fix repairs them)"))
