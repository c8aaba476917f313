"""`imagen4ctl seed-gallery`: the incident's five verification images, idempotently."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imagen4ctl.commands._batch import read_prompt_file, run_and_report
from imagen4ctl.commands.options import TimeoutOption, UserIdOption, resolve_user_id
from imagen4ctl.context import AppContext
from imagen4ctl.output import JsonOption, info


def seed_gallery(
    ctx: typer.Context,
    user_id: UserIdOption = None,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", show_default=False, dir_okay=False,
                     help="One PROMPT or RATIO<TAB>PROMPT per line; # starts a comment."),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, max=64)] = 2,
    force: Annotated[
        bool, typer.Option("--force", help="Generate even (prompt, ratio) pairs already done.")
    ] = False,
    timeout: TimeoutOption = None,
    json_out: JsonOption = False,
) -> None:
    """Generate the gallery's verification images; a rerun skips what is already COMPLETED.

    Example: imagen4ctl seed-gallery --user-id 42
    """
    from imagen4ctl.services.seeding import plan_seed

    app = AppContext.from_typer(ctx)
    owner = resolve_user_id(user_id, app.settings.default_user_id)
    pairs = read_prompt_file(prompts) if prompts is not None else None
    service = app.generation_service()
    plan = plan_seed(service, owner, pairs, force=force)
    if plan.skipped and not json_out:
        info(f"{plan.skipped} of {plan.total} already COMPLETED or in flight for user {owner}: "
             "skipped (--force regenerates them)")
    specs = [service.bound(spec) for spec in plan.specs()]  # IMAGEN4_MODEL's rules
    seconds = timeout if timeout is not None else app.settings.timeout
    run_and_report(service, specs, concurrency=concurrency, timeout=seconds,
                   unique=not force, title=f"gallery of user {owner}", json_out=json_out,
                   json_extra={"user_id": owner, "skipped": plan.skipped}, debug=app.debug)
