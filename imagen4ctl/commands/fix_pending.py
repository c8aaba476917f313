"""`imagen4ctl fix-pending`: recover stuck generations from fal; delete only with a backup."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imagen4ctl.commands.options import UserFilterOption, parse_duration_option
from imagen4ctl.context import AppContext
from imagen4ctl.durations import format_duration
from imagen4ctl.errors import UsageError
from imagen4ctl.keys import validate_user_id
from imagen4ctl.output import JsonOption, console, info, print_json

if TYPE_CHECKING:
    from imagen4ctl.services.recovery_plan import RecoveryReport


def fix_pending(
    ctx: typer.Context,
    older_than: Annotated[
        str | None, typer.Option("--older-than", show_default=False,
                                 help="Only rows unchanged this long (default: STUCK_AFTER, "
                                 "and the rows a generation left to fix-pending, at once).")
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help="Only this kind.")] = "imagen4",
    user_id: UserFilterOption = None,
    apply: Annotated[bool, typer.Option("--apply", help="Carry the plan out.")] = False,
    resubmit: Annotated[
        bool, typer.Option("--resubmit", help="Submit never-submitted rows now, on the same row.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Resubmit even rows whose submission state is "
                           "unknown (may pay twice).")
    ] = False,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete the rows that would fail (needs --backup).")
    ] = False,
    backup: Annotated[
        Path | None, typer.Option("--backup", dir_okay=False, show_default=False,
                                  help="JSON-lines file the deleted rows are written to first.")
    ] = None,
    restore: Annotated[
        Path | None, typer.Option("--restore", dir_okay=False, show_default=False,
                                  help="Put rows from a --backup file back, and exit.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, show_default=False)] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64)] = 4,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Deadline of each recovery or "
                            "resubmission, in seconds.")
    ] = 300.0,
    json_out: JsonOption = False,
) -> None:
    """Find PENDING/PROCESSING rows stuck longer than a threshold and recover them from fal.

    A dry run by default: it prints the plan and changes nothing. Exit 0 when every action
    succeeded, 1 when fal could not be asked about a row, a row cannot be resubmitted as it
    is, or an action failed.

    Example: imagen4ctl fix-pending --apply --resubmit
    """
    from imagen4ctl.services.backup import restore as restore_rows
    from imagen4ctl.services.recovery_plan import RecoveryOptions

    if user_id is not None:
        validate_user_id(user_id)
    app = AppContext.from_typer(ctx)
    if restore is not None:
        if apply or delete or resubmit:
            raise UsageError("--restore cannot be combined with --apply, --delete or --resubmit")
        restored, skipped = restore_rows(app.database, restore)
        console.print(f"restored {restored} rows from {escape(str(restore))}"
                      + (f"; {len(skipped)} skipped (id exists): {skipped}" if skipped else ""))
        raise typer.Exit(1 if skipped else 0)
    options = RecoveryOptions(
        older_than=parse_duration_option(older_than, "--older-than", app.settings.stuck_after),
        kind=kind, user_id=user_id, apply=apply, resubmit=resubmit, force=force, delete=delete,
        backup=backup, limit=limit, concurrency=concurrency, timeout=timeout,
        handed_over=older_than is None,
    )
    report = app.recovery(options).run()
    if json_out:
        print_json(report.to_json())
    else:
        _render(report)
    raise typer.Exit(0 if report.ok else 1)


def _render(report: RecoveryReport) -> None:
    mode = "dry run: nothing was changed" if report.dry_run else "applied"
    if not report.items:
        console.print(f"nothing stuck longer than {format_duration(report.older_than_seconds)}")
        return
    table = Table(title=f"stuck generations ({mode})", title_justify="left")
    for column in ("id", "user", "age", "in state", "fal request", "fal says", "action",
                   "outcome"):
        table.add_column(column)
    for item in report.items:
        says = item.fal_status or "-"
        if item.queue_position is not None:
            says += f" (position {item.queue_position})"
        if item.source:
            says += f" via {item.source}"
        outcome = item.outcome + (f": {item.error}" if item.error else "")
        table.add_row(str(item.id), escape(item.user_id), format_duration(item.age_seconds),
                      format_duration(item.state_seconds), escape(item.fal_request_id or "-"),
                      escape(says), item.action, escape(outcome),
                      style="red" if item.failed else None)
    console.print(table)
    counts = report.counts()
    info(", ".join(f"{n} {a}" for a, n in counts.items() if n) + f" ({mode})")
    if report.dry_run and any(i.action != "wait" and i.action != "skip" for i in report.items):
        info("run again with --apply to carry this out")
