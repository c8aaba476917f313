"""`imagen4ctl health`: one verdict for cron, Nagios and Kubernetes, with the Nagios exit codes.

Options are taken as text and checked here, so that a typo exits 3 (UNKNOWN) like any other
usage error of this command, never 2, which a monitor would read as CRITICAL.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape
from typer.core import TyperCommand

from imagen4ctl.context import AppContext
from imagen4ctl.durations import parse_duration
from imagen4ctl.output import console, print_error, print_json, redact

if TYPE_CHECKING:
    from imagen4ctl.services.health import HealthReport, Thresholds

FORMATS = ("text", "json", "nagios")
EXIT_UNKNOWN = 3
_STYLES = {"OK": "green", "WARNING": "yellow", "CRITICAL": "bold red", "UNKNOWN": "magenta"}


class HealthCommand(TyperCommand):
    """Click's own usage errors (unknown option, missing value) exit 3 here too, not 2."""

    # Typed loosely: typer vendors click, whose Context is not `typer.Context` for mypy.
    def make_context(self, info_name: str | None, args: list[str], parent: Any = None,
                     **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except Exception as e:
            if getattr(e, "exit_code", None) == 2 and hasattr(e, "ctx"):  # click's UsageError
                e.exit_code = EXIT_UNKNOWN  # type: ignore[attr-defined]
            raise


def health(
    ctx: typer.Context,
    max_stuck: Annotated[str, typer.Option(
        "--max-stuck", metavar="N", help="CRITICAL above this many stuck generations.")] = "0",
    min_success: Annotated[str, typer.Option(
        "--min-success", metavar="R", help="WARNING below this success ratio (0-1).")] = "0.9",
    window: Annotated[str, typer.Option(
        "--window", metavar="D", help="Success ratio over generations created this recently.")
    ] = "1h",
    min_samples: Annotated[str, typer.Option(
        "--min-samples", metavar="N", help="Judge the ratio only from this many generations.")
    ] = "10",
    output_format: Annotated[str, typer.Option(
        "--format", metavar="text|json|nagios", help="text, json or nagios (one line with "
        "performance data).")] = "text",
    timeout: Annotated[str, typer.Option(
        "--timeout", metavar="D", help="Bound of each probe (database, storage, fal).")] = "5s",
) -> None:
    """Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; each failing check names its fix.

    CRITICAL: stuck generations above --max-stuck, or database, schema, storage or fal unusable.

    WARNING: success ratio below --min-success over --window (from --min-samples generations).

    Storage is checked read-only; fal with a status probe that costs nothing.

    Example: imagen4ctl health --format nagios --window 30m
    """
    from imagen4ctl.services.health import assess

    fmt = output_format.strip().lower()
    if fmt not in FORMATS:
        _usage_error("text", f"--format must be text, json or nagios, not {output_format!r}")
    limits, probe_timeout = _options(fmt, max_stuck, min_success, window, min_samples, timeout)
    report = assess(AppContext.from_typer(ctx).settings, limits, timeout=probe_timeout)
    if fmt == "json":
        print_json(report.to_json())
    elif fmt == "nagios":
        _write(_nagios_line(report))
    else:
        _render_text(report)
    raise typer.Exit(report.exit_code)


def _options(fmt: str, max_stuck: str, min_success: str, window: str, min_samples: str,
             timeout: str) -> tuple[Thresholds, float]:
    from imagen4ctl.services.health import Thresholds

    def count(option: str, text: str) -> int:
        if not (text.strip().isascii() and text.strip().isdigit()):
            _usage_error(fmt, f"{option} must be a whole number of 0 or more, not {text!r}")
        return int(text)

    def duration(option: str, text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError as e:
            _usage_error(fmt, f"{option}: {e}")
        if seconds <= 0:
            _usage_error(fmt, f"{option} must be more than 0, not {text!r}")
        return seconds

    try:
        ratio = float(min_success)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        _usage_error(fmt, f"--min-success must be a ratio from 0 to 1 (e.g. 0.9), not "
                     f"{min_success!r}")
    limits = Thresholds(max_stuck=count("--max-stuck", max_stuck), min_success=ratio,
                        window_seconds=duration("--window", window),
                        window_label=window.strip(), min_samples=count("--min-samples",
                                                                       min_samples))
    return limits, duration("--timeout", timeout)


def _usage_error(fmt: str, message: str) -> NoReturn:
    """Exit 3 (UNKNOWN); machines reading stdout (json, nagios) get the verdict there too."""
    hint = "See `imagen4ctl health --help`."
    print_error(message, hint)
    if fmt == "json":
        print_json({"status": "UNKNOWN", "exit_code": EXIT_UNKNOWN,
                    "checks": [{"name": "usage", "status": "UNKNOWN", "message": message,
                                "hint": hint}],
                    "stuck": None, "success_ratio": None, "samples": 0})
    elif fmt == "nagios":
        _write(f"IMAGEN4CTL UNKNOWN - {_one_line(message)}")
    raise typer.Exit(EXIT_UNKNOWN)


def _render_text(report: HealthReport) -> None:
    status = report.status
    console.print(f"[{_STYLES[status]}]{status}[/]: {escape(redact(report.summary))}",
                  soft_wrap=True)
    for check in report.checks:
        fix = f" — {check.hint}" if check.hint and not check.ok else ""
        console.print(f"[{_STYLES[check.status]}]{check.status:<8}[/] {check.name}: "
                      f"{escape(redact(check.message + fix))}", soft_wrap=True)


def _nagios_line(report: HealthReport) -> str:
    """`IMAGEN4CTL STATUS - summary | perfdata`; thresholds in Nagios range syntax."""
    limits = report.thresholds
    stuck = str(report.stuck.count) if report.stuck else "U"
    ratio = report.window.ratio if report.window else None
    samples = report.window.samples if report.window else 0
    perf = (f"stuck={stuck};;{limits.max_stuck} "
            f"success_ratio={'U' if ratio is None else round(ratio, 4)};{limits.min_success}: "
            f"samples={samples}")
    return f"IMAGEN4CTL {report.status} - {_one_line(report.summary)} | {perf}"


def _one_line(text: str) -> str:
    return " ".join(text.replace("|", "/").split())  # `|` starts Nagios performance data


def _write(line: str) -> None:
    sys.stdout.write(redact(line) + "\n")
    sys.stdout.flush()
