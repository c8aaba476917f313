"""`imagen4ctl user-images`: statistics that add up, and stuck generations in plain sight."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imagen4ctl.commands.options import parse_duration_option
from imagen4ctl.context import AppContext
from imagen4ctl.durations import format_duration
from imagen4ctl.errors import Imagen4ctlError
from imagen4ctl.keys import validate_user_id
from imagen4ctl.output import JsonOption, console, print_json, print_warning

if TYPE_CHECKING:
    from imagen4ctl.services.stats import StatsReport

EXIT_STUCK = 3


StuckAfterOption = Annotated[
    str | None,
    typer.Option("--stuck-after", show_default=False,
                 help="PENDING/PROCESSING unchanged this long is stuck (default: STUCK_AFTER)."),
]


def user_images(
    ctx: typer.Context,
    user_id: Annotated[
        str | None, typer.Argument(help="The user's id; the whole fleet if omitted.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only this kind (imagen4, avatar, …).")
    ] = None,
    stuck_after: StuckAfterOption = None,
    recent: Annotated[int, typer.Option("--recent", min=0, help="Recent images to link.")] = 5,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Stuck rows to list.")] = 20,
    fail_on_stuck: Annotated[
        bool, typer.Option("--fail-on-stuck", help=f"Exit {EXIT_STUCK} when anything is stuck.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Generations per kind and status (totals that add up), stuck ones, recent images.

    Example: imagen4ctl user-images 42 --fail-on-stuck
    """
    from imagen4ctl.services import stats

    if user_id is not None:
        validate_user_id(user_id)
    app = AppContext.from_typer(ctx)
    threshold = parse_duration_option(stuck_after, "--stuck-after", app.settings.stuck_after)
    storage = None
    if recent:
        try:
            storage = app.storage(timeout=3.0)
        except Imagen4ctlError as e:
            print_warning(f"no image links: {e.message}")
    with app.database.read() as reader:
        report = stats.user_report(reader, user_id, stuck_after=threshold, kind=kind,
                                   limit=limit, recent=recent, storage=storage)
    if json_out:
        print_json(report.to_json())
    else:
        _render(report)
    if fail_on_stuck and report.stuck_count:
        raise typer.Exit(EXIT_STUCK)


def _render(report: StatsReport) -> None:
    who = f"user {report.user_id}" if report.user_id else f"fleet: {report.users} users"
    console.print(f"[bold]{escape(who)}[/] — {report.total} generations")
    if report.total:
        console.print(_counts_table(report))
    if report.stuck:
        table = Table(title=f"stuck (unchanged for more than "
                      f"{format_duration(report.stuck_after_seconds)}), oldest first",
                      title_justify="left", style="red")
        for column in ("id", "user", "kind", "status", "age", "in state", "fal request"):
            table.add_column(column)
        for s in report.stuck:
            table.add_row(str(s.id), escape(s.user_id), escape(s.kind), s.status,
                          format_duration(s.age_seconds), format_duration(s.state_seconds),
                          escape(s.fal_request_id or "-"), style="bold red")
        console.print(table)
        if report.stuck_count > len(report.stuck):
            console.print(f"… and {report.stuck_count - len(report.stuck)} more (--limit)")
    if report.user_id is None and report.top_stuck_users:
        console.print("most stuck: " + ", ".join(
            f"{escape(u)} ({n})" for u, n in report.top_stuck_users))
    for image in report.recent:
        expiry = (f" (links expire in {format_duration(image.url_expires_seconds)})"
                  if image.url_expires_seconds else "")
        console.print(f"recent #{image.id} {escape(image.kind)}: {escape(image.prompt)}{expiry}",
                      soft_wrap=True)
        for url in image.urls:
            console.print(f"  [link={url}]{escape(url)}[/link]" if url else "  (no link)",
                          soft_wrap=True)
    style = "red" if report.stuck_count else "green"
    console.print(f"[{style}]{escape(report.verdict)}[/]", soft_wrap=True)


def _counts_table(report: StatsReport) -> Table:
    statuses = report.statuses
    table = Table(title_justify="left", show_footer=True)
    table.add_column("kind", footer="total")
    for status in statuses:
        footer = sum(c.get(status, 0) for c in report.by_kind.values())
        table.add_column(status, justify="right", footer=str(footer))
    table.add_column("total", justify="right", footer=str(report.total))
    for kind, counts in sorted(report.by_kind.items()):
        stuck = report.stuck_by_kind.get(kind, 0)
        cells = [str(counts.get(s, 0)) for s in statuses]
        table.add_row(escape(kind), *cells, str(sum(counts.values())),
                      style="yellow" if stuck else None)
    return table
