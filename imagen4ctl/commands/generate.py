"""`imagen4ctl generate PROMPT`: one generation through the generation service."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from imagen4ctl.commands._batch import read_prompt_file, run_and_report, show_following
from imagen4ctl.commands.options import TimeoutOption, UserIdOption, resolve_user_id
from imagen4ctl.context import AppContext
from imagen4ctl.endpoints import endpoint_named, model_help, option_help
from imagen4ctl.errors import UsageError
from imagen4ctl.output import JsonOption, console, live_status, print_json

if TYPE_CHECKING:
    from imagen4ctl.services.outcome import Outcome, Progress


def generate(
    ctx: typer.Context,
    prompt: Annotated[
        str | None, typer.Argument(help="What to draw (or use --from-file).", show_default=False)
    ] = None,
    user_id: UserIdOption = None,
    model: Annotated[
        str | None, typer.Option("--model", help=model_help(), show_default=False)
    ] = None,
    aspect_ratio: Annotated[
        str, typer.Option("--aspect-ratio", "-a", help=option_help("aspect_ratio"))
    ] = "1:1",
    num_images: Annotated[
        int, typer.Option("--num-images", "-n", help=option_help("num_images"))
    ] = 1,
    seed: Annotated[int | None, typer.Option("--seed", show_default=False)] = None,
    negative_prompt: Annotated[
        str | None,
        typer.Option("--negative-prompt", help=option_help("negative_prompt"), show_default=False),
    ] = None,
    resolution: Annotated[
        str | None,
        typer.Option("--resolution", help=option_help("resolution"), show_default=False),
    ] = None,
    timeout: TimeoutOption = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Submit, record the request id, and exit.")
    ] = False,
    from_file: Annotated[
        Path | None,
        typer.Option("--from-file", dir_okay=False, show_default=False,
                     help="One PROMPT or RATIO<TAB>PROMPT per line; # starts a comment."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=64,
                          help="Generations in flight with --from-file (fal's starting limit "
                          "is 2).")
    ] = 2,
    json_out: JsonOption = False,
) -> None:
    """Generate images with Imagen 4 on fal and store them; exit 0 only when COMPLETED.

    With --from-file, a batch: one progress bar, a summary table, a JSON list; --timeout is
    then the deadline of each generation.

    Example: imagen4ctl generate "A cat playing with a ball" --aspect-ratio 3:4 --user-id 42
    """
    from imagen4ctl.deadline import Deadline
    from imagen4ctl.services.generation import GenerationSpec

    app = AppContext.from_typer(ctx)
    if (prompt is None) == (from_file is None):
        raise UsageError("give either a PROMPT or --from-file FILE")
    owner = resolve_user_id(user_id, app.settings.default_user_id)
    endpoint = endpoint_named(model, "--model") if model is not None else \
        endpoint_named(app.settings.model, "IMAGEN4_MODEL")
    if from_file is not None:
        specs = [GenerationSpec(user_id=owner, prompt=p, aspect_ratio=r, num_images=num_images,
                                seed=seed, negative_prompt=negative_prompt,
                                resolution=resolution, model=endpoint.id)
                 for r, p in read_prompt_file(from_file)]
        run_and_report(app.generation_service(), specs, concurrency=concurrency,
                       timeout=timeout if timeout is not None else app.settings.timeout,
                       title=f"batch of {len(specs)} from {from_file}", json_out=json_out,
                       debug=app.debug)
        return
    assert prompt is not None
    spec = GenerationSpec(user_id=owner, prompt=prompt, aspect_ratio=aspect_ratio,
                          num_images=num_images, seed=seed, negative_prompt=negative_prompt,
                          resolution=resolution, model=endpoint.id)
    service = app.generation_service()
    deadline = Deadline(timeout if timeout is not None else app.settings.timeout)
    with live_status("preparing…") as show:
        outcome = service.generate(spec, deadline, wait=not no_wait,
                                   on_progress=lambda p: show(describe_progress(p)))
    if json_out:
        print_json(outcome.to_json())
    else:
        render_outcome(outcome)
    if app.debug:
        show_following([outcome])
    if outcome.exception is not None:
        raise outcome.exception


def describe_progress(progress: Progress) -> str:
    where = f"generation {progress.generation_id}"
    if progress.phase == "queued":
        position = progress.queue_position
        return f"{where}: in fal's queue" + (f" (position {position})" if position else "")
    if progress.phase == "running":
        return f"{where}: running" + (f" — {progress.detail}" if progress.detail else "")
    return f"{where}: {progress.phase}" + (f" {progress.detail}" if progress.detail else "")


def render_outcome(outcome: Outcome) -> None:
    request = f" (fal request {outcome.fal_request_id})" if outcome.fal_request_id else ""
    mark = {"COMPLETED": "[green]✓[/]", "FAILED": "[red]✗[/]"}.get(outcome.status, "[yellow]…[/]")
    console.print(f"{mark} generation {outcome.id} {outcome.status} in {outcome.seconds:.1f}s"
                  f"{escape(request)}", soft_wrap=True)
    for image in outcome.images:
        size = f"{image.width}x{image.height}" if image.width else "?x?"
        console.print(f"  {escape(image.key)}  {size}  {image.size:,} bytes", soft_wrap=True)
        console.print(f"  [dim]{escape(image.url)}[/]", soft_wrap=True)
