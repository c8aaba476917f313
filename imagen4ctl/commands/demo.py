"""`imagen4ctl demo`: the empty-gallery incident and its fix, offline, in under 30 seconds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from imagen4ctl.errors import Imagen4ctlError
from imagen4ctl.output import console


def demo(
    keep: Annotated[
        Path | None,
        typer.Option("--keep", file_okay=False, show_default=False,
                     help="Keep everything (database, images, gallery) in this new folder."),
    ] = None,
) -> None:
    """Replay the incident against a local fal emulator: no keys, servers or network needed.

    Every step is the real imagen4ctl; exit codes and numbers are checked (exit 1 if any
    differs). Your environment and ./.env are ignored.

    Example: imagen4ctl demo
    """
    from imagen4ctl.demo import story

    def echo(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = story.run(keep, echo)
    differing = [r for r in result.results if r.problems]
    console.print(f"\n{len(result.results)} steps in {result.seconds:.1f}s; "
                  + ("every exit code and number as expected" if not differing
                     else f"{len(differing)} step(s) differ"))
    index = result.gallery / "index.html"
    console.print(f"gallery: {index}", soft_wrap=True)
    if differing:
        raise Imagen4ctlError(f"the demo differs from the story in {len(differing)} step(s)",
                              hint="See the lines starting with !! above.")
