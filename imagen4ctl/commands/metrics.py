"""`imagen4ctl metrics`: Prometheus text exposition on stdout, or served at /metrics."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from imagen4ctl.context import AppContext
from imagen4ctl.output import info, redact


def metrics(
    ctx: typer.Context,
    serve_port: Annotated[int | None, typer.Option(
        "--serve", metavar="PORT", min=0, max=65535, show_default=False,
        help="Serve GET /metrics on this port (0: any free one) until Ctrl-C, instead of "
        "printing once.")] = None,
    bind: Annotated[str, typer.Option("--bind", metavar="ADDR",
                                      help="Address to serve on (0.0.0.0: every interface).")
                    ] = "127.0.0.1",
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Bound of each probe per scrape, in seconds.")] = 5.0,
) -> None:
    """Prometheus metrics: generations by kind and status, stuck, success ratio, latency, checks.

    Every scrape computes fresh values: a few GROUP BY queries and the health probes.

    No secret is ever part of the output.

    Example: imagen4ctl metrics --serve 9464 --bind 0.0.0.0
    """
    from imagen4ctl.services.metrics import MetricsCollector, serve

    settings = AppContext.from_typer(ctx).settings
    settings.stuck_after  # noqa: B018 - a bad STUCK_AFTER fails now, not on every scrape
    collector = MetricsCollector(settings, timeout=timeout)
    try:
        if serve_port is None:
            sys.stdout.write(redact(collector.render()))
            sys.stdout.flush()
            return
        serve(lambda: redact(collector.render()), bind=bind, port=serve_port,
              ready=lambda url: info(f"serving metrics at {url} (Ctrl-C stops)"))
        info("stopped")
    finally:
        collector.close()
