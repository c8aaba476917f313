"""`imagen4ctl seed-gallery`: the incident's five verification images, idempotently."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imagen4ctl.commands.batch import read_prompt_file, run_and_report
from imagen4ctl.commands.generate import TimeoutOption, UserIdOption, resolve_user_id
from imagen4ctl.context import AppContext
from imagen4ctl.output import JsonOption, info

GALLERY = (
    ("1:1", "Beautiful sunset over the mountains"),
    ("3:4", "A cat playing with a ball"),
    ("16:9", "Cosmic landscape"),
    ("1:1", "Blooming garden in spring"),
    ("3:4", "An old castle"),
)


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
    from imagen4ctl.services.generation import GenerationSpec

    app = AppContext.from_typer(ctx)
    owner = resolve_user_id(app, user_id)
    pairs = read_prompt_file(prompts) if prompts is not None else list(GALLERY)
    service = app.generation_service()
    done = set() if force else service.existing_pairs(owner)
    todo = [(ratio, prompt) for ratio, prompt in pairs if (prompt, ratio) not in done]
    skipped = len(pairs) - len(todo)
    if skipped and not json_out:
        info(f"{skipped} of {len(pairs)} already COMPLETED or in flight for user {owner}: "
             "skipped (--force regenerates them)")
    specs = [GenerationSpec(user_id=owner, prompt=p, aspect_ratio=r) for r, p in todo]
    seconds = timeout if timeout is not None else app.settings.timeout
    run_and_report(service, specs, concurrency=concurrency, timeout=seconds, unique=not force,
                   title=f"gallery of user {owner}", json_out=json_out,
                   json_extra={"user_id": owner, "skipped": skipped})
