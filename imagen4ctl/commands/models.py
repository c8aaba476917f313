"""`imagen4ctl models`: the Imagen 4 endpoints imagen4ctl knows, and what each takes."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from imagen4ctl.endpoints import catalogue
from imagen4ctl.output import JsonOption, console, json_text, print_json


def models(json_out: JsonOption = False) -> None:
    """List fal's Imagen 4 endpoints: aspect ratios, images per request, resolutions, other
    options. `generate --model` (default: IMAGEN4_MODEL) picks one.

    Example: imagen4ctl models --json
    """
    endpoints = catalogue()
    if json_out:
        print_json(endpoints)
        return
    table = Table(title="fal endpoints", title_justify="left")
    table.add_column("endpoint", no_wrap=True)
    for column in ("aspect ratios", "images per request", "resolutions"):
        table.add_column(column)
    for endpoint in endpoints:
        images = endpoint["images_per_request"]
        table.add_row(escape(endpoint["endpoint"]), " ".join(endpoint["aspect_ratios"]),
                      f"{images['min']} to {images['max']}",
                      " ".join(endpoint["resolutions"]) or "-")
    console.print(table)
    console.print("other options:")
    for line in _other_options(endpoints):
        console.print(f"  {escape(line)}", soft_wrap=True)


def _other_options(endpoints: list[dict[str, Any]]) -> list[str]:
    """`output_format: jpeg, png, webp (fal's default "png")`, and which endpoints take it
    when not all do."""
    taken_by: dict[str, list[str]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        for name, spec in endpoint["other_options"].items():
            taken_by.setdefault(name, []).append(endpoint["endpoint"])
            specs.setdefault(name, spec)
    lines = []
    for name, spec in specs.items():
        values = ", ".join(spec["choices"]) if "choices" in spec else spec["type"]
        default = f" (fal's default {json_text(spec['default'])})" if "default" in spec else ""
        only = "" if len(taken_by[name]) == len(endpoints) else \
            f"; only {', '.join(taken_by[name])}"
        lines.append(f"{name}: {values}{default}{only}")
    return lines
