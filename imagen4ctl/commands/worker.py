"""`imagen4ctl worker`: see every queued or stuck row through to COMPLETED or FAILED."""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from imagen4ctl.context import AppContext
from imagen4ctl.output import json_line, redact

if TYPE_CHECKING:
    from imagen4ctl.services.worker_state import WorkerEvent


def worker(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, max=256,
        help="Requests at fal from this process at once (it stores one generation's images "
        "while the next runs); FAL_MAX_CONCURRENT caps the whole fleet.")] = 2,
    kind: Annotated[str, typer.Option("--kind", help="The rows of this kind.")] = "imagen4",
    once: Annotated[bool, typer.Option(
        "--once", help="Handle what the table holds now, then exit with fix-pending's exit "
        "codes (for cron).")] = False,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", metavar="PORT", min=0, max=65535, show_default=False,
        help="Serve /metrics and /healthz on this port (0: any free one).")] = None,
    metrics_host: Annotated[str, typer.Option(
        "--metrics-host", metavar="ADDR", help="Address to serve them on (0.0.0.0: every "
        "interface).")] = "127.0.0.1",
    grace: Annotated[float, typer.Option(
        "--grace", min=0, metavar="SECONDS",
        help="After SIGTERM or Ctrl-C, finish the rows in hand for this long, then hand "
        "them back.")] = 30.0,
    claim_timeout: Annotated[float, typer.Option(
        "--claim-timeout", min=1, metavar="SECONDS",
        help="A claim not renewed for this long is stale: another worker takes the row (at "
        "once when its worker was on this host and is gone).")] = 60.0,
    json_logs: Annotated[bool, typer.Option(
        "--json-logs", help="One JSON object per line on stderr instead of plain lines.")
    ] = False,
    webhook_url: Annotated[str | None, typer.Option(
        "--webhook-url", metavar="URL", show_default=False,
        help="Submit with this webhook URL (where fal reaches --webhook-port, e.g. through "
        "a reverse proxy that keeps the path); verified deliveries end the rows.")] = None,
    webhook_port: Annotated[int | None, typer.Option(
        "--webhook-port", metavar="PORT", min=0, max=65535, show_default=False,
        help="Receive fal's deliveries on this port, at --webhook-url's path (the same as "
        "--metrics-port: one server).")] = None,
    webhook_host: Annotated[str, typer.Option(
        "--webhook-host", metavar="ADDR", help="Address to receive them on.")] = "127.0.0.1",
    webhook_grace: Annotated[float, typer.Option(
        "--webhook-grace", min=0, metavar="SECONDS",
        help="A row with no delivery by then is followed as without webhooks.")] = 60.0,
) -> None:
    """Submit the rows the bot queued (PENDING, nothing tried yet) and see them, and every
    stuck row, through to COMPLETED or FAILED, as fix-pending would: on one machine or many
    sharing one PostgreSQL, never more than FAL_MAX_CONCURRENT requests at fal in all.

    One log line per change of state on stderr. SIGTERM or Ctrl-C: nothing more is claimed,
    the rows in hand are finished or handed back within --grace, exit 0; a second signal
    hands them back at once.

    Example: imagen4ctl worker --concurrency 2 --metrics-port 9465
    """
    from imagen4ctl.services.worker import WorkerOptions

    options = WorkerOptions(kind=kind, concurrency=concurrency, once=once,
                            metrics_port=metrics_port, metrics_host=metrics_host, grace=grace,
                            claim_timeout=claim_timeout, webhook_url=webhook_url,
                            webhook_port=webhook_port, webhook_host=webhook_host,
                            webhook_grace=webhook_grace)
    app = AppContext.from_typer(ctx)
    log = _Log(json_logs)
    report = app.worker(options, on_event=log.write, scrub=redact).run()
    if report.abandoned:
        # Threads still hold network calls: leave now, as the grace period promised; every
        # row they held was handed back.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if not once else 1)
    raise typer.Exit(0 if report.ok or not once else 1)


class _Log:
    """The worker's lines on stderr, whole lines from any thread, secrets removed."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._lock = threading.Lock()

    def write(self, event: WorkerEvent) -> None:
        line = json_line(event.to_json()) if self.as_json else redact(event.plain())
        with self._lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
