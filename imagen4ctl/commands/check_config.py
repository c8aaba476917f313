"""`imagen4ctl check-config`: a doctor for settings, fal, the database and storage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imagen4ctl.context import AppContext
from imagen4ctl.output import STATUS_MARKS, JsonOption, console, print_json

if TYPE_CHECKING:
    from imagen4ctl.services.doctor import DoctorReport


def check_config(
    ctx: typer.Context,
    json_out: JsonOption = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Bound of each live probe, in seconds.")
    ] = 5.0,
    offline: Annotated[
        bool, typer.Option("--offline", help="Skip every probe that opens a network connection.")
    ] = False,
) -> None:
    """Check the fal key, fal, the database, the schema and storage; list every setting.

    Exit 0 when no check fails (warnings allowed), 1 otherwise.

    Example: imagen4ctl check-config --offline
    """
    from imagen4ctl.services.doctor import diagnose

    app = AppContext.from_typer(ctx)
    report = diagnose(app.settings, timeout=timeout, offline=offline)
    if json_out:
        print_json(report.to_json())
    else:
        _render(report)
    raise typer.Exit(0 if report.ok else 1)


def _render(report: DoctorReport) -> None:
    for check in report.checks:
        console.print(f"{STATUS_MARKS[check.status]} {check.name}: {escape(check.message)}",
                      soft_wrap=True)
        if check.hint and check.status in {"fail", "warn"}:
            console.print(f"    [dim]hint:[/] {escape(check.hint)}", soft_wrap=True)
    console.print(_settings_table(report))
    console.print(f"check-config: {'ok' if report.ok else 'failed'}")


def _settings_table(report: DoctorReport) -> Table:
    table = Table(title="settings", title_justify="left")
    for column in ("variable", "value", "source", "read by"):
        table.add_column(column)
    for row in report.settings:
        style = "dim" if row.source == "unset" else None
        table.add_row(row.name, escape(row.value), escape(row.source), row.consumer, style=style)
    return table
