"""Consoles, JSON and error rendering: the only place output is formatted for a person.

Rich honours NO_COLOR and drops styling when stdout is not a terminal. Secrets known to the
settings are registered here and removed from any error text before it is printed.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON only, on stdout.")]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

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
    sys.stdout.write(redact(json.dumps(data, indent=2, ensure_ascii=False, default=str)) + "\n")
    sys.stdout.flush()


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
