"""Consoles, JSON and error rendering: the only place output is formatted for a person.

Rich honours NO_COLOR and drops styling when stdout is not a terminal. Secrets known to the
settings are registered here and removed from any error text before it is printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from imagen4ctl.settings import styling_disabled

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON only, on stdout.")]

_COLOR: Literal["auto"] | None = None if styling_disabled() else "auto"
console = Console(highlight=False, color_system=_COLOR)
err_console = Console(stderr=True, highlight=False, color_system=_COLOR)

_secrets: set[str] = set()


def register_secrets(values: list[str]) -> None:
    _secrets.update(v for v in values if len(v) >= 4)


def redact(text: str) -> str:
    """Text with every known secret replaced: the last line of defence, not the first."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def print_json(data: Any) -> None:
    """JSON alone on stdout (no Rich wrapping or highlighting), secrets redacted."""
    sys.stdout.write(redact(json_text(data)) + "\n")
    sys.stdout.flush()


def json_line(data: Any) -> str:
    """`data` as one line of JSON (a log line), secrets redacted."""
    import orjson

    return redact(orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode())


def json_text(data: Any) -> str:
    """`json.dumps(data, indent=2, ensure_ascii=False, default=str)`, written by orjson: the
    json module indents in pure Python, 0.2 s for a 10,000-row fix-pending report. Only
    floats below 1e-4 or from 1e16 are spelled differently (`1e-7`, not `1e-07`)."""
    import orjson

    # Keys that are not strings as json writes them; datetimes and dataclasses through
    # `default=str`, as json has them.
    options = (orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
               | orjson.OPT_PASSTHROUGH_DATACLASS)
    try:
        return orjson.dumps(data, default=str, option=options).decode()
    except orjson.JSONEncodeError:  # what orjson refuses: integers beyond 64 bits
        return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def print_error(message: str, hint: str | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {escape(redact(message))}", soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(redact(hint))}", soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(redact(message))}", soft_wrap=True)


def info(message: str) -> None:
    """A progress line for people: stderr, so stdout stays clean for --json and pipes."""
    err_console.print(escape(redact(message)), soft_wrap=True)


STATUS_MARKS = {
    "ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]", "skip": "[dim]-[/]",
}


@contextmanager
def live_status(initial: str) -> Iterator[Callable[[str], None]]:
    """A spinner line on a terminal, plain lines (each change once) when stderr is piped."""
    if err_console.is_terminal:
        with err_console.status(escape(initial)) as status:
            yield lambda text: status.update(escape(text))
        return
    last: list[str] = []

    def plain(text: str) -> None:
        if not last or last[-1] != text:
            last.append(text)
            info(text)

    plain(initial)
    yield plain


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[str], None]]:
    """One bar for a batch; advance it by calling the yielded function with a note."""
    if not err_console.is_terminal:
        done = [0]
        every = 1 if total <= 20 else -(-total // 10)  # at most about ten lines for a big batch

        def plain(note: str) -> None:
            done[0] += 1
            if done[0] % every == 0 or done[0] == total:
                info(f"[{done[0]}/{total}] {note}")

        yield plain
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=False) as progress:
        task = progress.add_task(escape(description), total=total)
        yield lambda _note: progress.advance(task)
