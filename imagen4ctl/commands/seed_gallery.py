"""`imagen4ctl seed-gallery`: the incident's five verification images, idempotently."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imagen4ctl.commands.generate import TimeoutOption, UserIdOption, resolve_user_id
from imagen4ctl.context import AppContext
from imagen4ctl.errors import GenerationFailed, UsageError
from imagen4ctl.output import JsonOption, console, info, print_json, progress_bar

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
    done = set() if force else service.completed_pairs(owner)
    todo = [(ratio, prompt) for ratio, prompt in pairs if (prompt, ratio) not in done]
    skipped = len(pairs) - len(todo)
    if skipped and not json_out:
        info(f"{skipped} of {len(pairs)} already COMPLETED for user {owner}: skipped "
             "(--force regenerates them)")
    specs = [GenerationSpec(user_id=owner, prompt=p, aspect_ratio=r) for r, p in todo]
    seconds = timeout if timeout is not None else app.settings.timeout
    with progress_bar(len(specs), "seeding the gallery") as advance:
        outcomes = service.run_batch(
            specs, concurrency=concurrency, timeout=seconds,
            on_done=lambda o: advance(f"generation {o.id} {o.status}: {o.prompt}"),
        ) if specs else []
    if json_out:
        print_json({"user_id": owner, "skipped": skipped,
                    "items": [o.to_json() | {"prompt": o.prompt, "aspect_ratio": o.aspect_ratio}
                              for o in outcomes]})
    else:
        table = Table(title=f"gallery of user {owner}", title_justify="left")
        for column in ("id", "ratio", "prompt", "status", "images / error"):
            table.add_column(column)
        for o in outcomes:
            detail = ", ".join(i.key for i in o.images) if o.images else (o.error or "")
            table.add_row(str(o.id), o.aspect_ratio or "", escape(o.prompt), o.status,
                          escape(detail))
        console.print(table)
    failed = [o for o in outcomes if o.status != "COMPLETED"]
    if failed:
        raise GenerationFailed(f"{len(failed)} of {len(outcomes)} gallery images did not "
                               "complete", hint="See the table; `imagen4ctl fix-pending` "
                               "collects those still PROCESSING.")


def read_prompt_file(path: Path) -> list[tuple[str, str]]:
    """`PROMPT` or `RATIO<TAB>PROMPT` lines; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read prompts file {path}: {e}") from e
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        ratio, tab, prompt = line.partition("\t")
        pair = (ratio, prompt) if tab else ("1:1", line)
        if not pair[1].strip():
            raise UsageError(f"{path}, line {number}: the prompt is empty")
        pairs.append(pair)
    if not pairs:
        raise UsageError(f"{path} has no prompts")
    return pairs
