"""What `generate --from-file` and `seed-gallery` share: prompt files, one progress bar for
the batch, a summary table, and the exit code."""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from imagen4ctl.errors import FalAccountLocked, GenerationFailed, UsageError
from imagen4ctl.output import console, err_console, print_json, progress_bar

if TYPE_CHECKING:
    from imagen4ctl.services.generation import GenerationService, GenerationSpec
    from imagen4ctl.services.outcome import Outcome


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


def run_and_report(
    service: GenerationService,
    specs: list[GenerationSpec],
    *,
    concurrency: int,
    timeout: float,
    title: str,
    json_out: bool,
    unique: bool = False,
    json_extra: dict[str, object] | None = None,
    debug: bool = False,
) -> list[Outcome]:
    """Run the batch with one progress bar, print the summary (or JSON), fail if any failed;
    a locked fal account is the error then, since it decided every row not yet sent."""
    from imagen4ctl.services.generation import NOT_SUBMITTED_LOCKED

    # What start-up loaded (SQLAlchemy, pydantic, Rich: ~300k objects) lives until exit.
    # Frozen, the collector's full passes skip it instead of stalling every thread ~40 ms.
    gc.freeze()
    with progress_bar(len(specs), title) as advance:
        outcomes = service.run_batch(
            specs, concurrency=concurrency, timeout=timeout, unique=unique,
            on_done=lambda o: advance(f"generation {o.id} {o.status}: {o.prompt}"),
        ) if specs else []
    if json_out:
        items = [o.to_json() | {"prompt": o.prompt, "aspect_ratio": o.aspect_ratio}
                 for o in outcomes]
        print_json({**json_extra, "items": items} if json_extra is not None else items)
    else:
        table = Table(title=title, title_justify="left")
        for column in ("id", "ratio", "prompt", "status", "seconds", "images / error"):
            table.add_column(column)
        for o in outcomes:
            detail = ", ".join(i.key for i in o.images) if o.images else (o.error or "")
            table.add_row(str(o.id), o.aspect_ratio or "", escape(o.prompt), o.status,
                          f"{o.seconds:.1f}", escape(detail),
                          style=None if o.status == "COMPLETED" else "red")
        console.print(table)
    if debug:
        show_following(outcomes)
    failed = [o for o in outcomes if o.status != "COMPLETED"]
    locked = next((o.exception for o in outcomes if isinstance(o.exception, FalAccountLocked)),
                  None)
    if locked is not None:
        unsent = sum(1 for o in outcomes if o.error == NOT_SUBMITTED_LOCKED)
        raise FalAccountLocked(f"{locked.message} ({unsent} of {len(outcomes)} generations not "
                               f"submitted: FAILED \"{NOT_SUBMITTED_LOCKED}\")", hint=locked.hint)
    if failed:
        raise GenerationFailed(f"{len(failed)} of {len(outcomes)} generations did not complete",
                               hint="See the table; `imagen4ctl fix-pending` collects those "
                               "still PROCESSING.")
    return outcomes


def show_following(outcomes: list[Outcome]) -> None:
    """--debug: how each generation heard from fal (its status stream, or polling), on stderr."""
    if len(outcomes) == 1:
        [o] = outcomes
        if o.followed:
            err_console.print(f"debug: generation {o.id} followed by {escape(o.followed)}",
                              soft_wrap=True)
        return
    for how, count in Counter(o.followed for o in outcomes if o.followed).most_common():
        err_console.print(f"debug: {count} generation(s) followed by {escape(how)}",
                          soft_wrap=True)
