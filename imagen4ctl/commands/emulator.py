"""`imagen4ctl emulator`: fal's queue API for Imagen 4 on this machine, for trying things out."""

from __future__ import annotations

import shlex
import signal
import threading
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from imagen4ctl.errors import UsageError
from imagen4ctl.output import err_console

if TYPE_CHECKING:
    from imagen4ctl.emulator.webhooks import WebhookSender


class WebhookFault(StrEnum):
    """The emulator's webhook knobs (imagen4ctl/emulator/webhooks.py), one per delivery fault."""

    drop = "drop"
    signature = "signature"
    body = "body"
    stale = "stale"
    unsigned = "unsigned"
    key = "key"
    payload_error = "payload-error"


def webhook_knobs(webhooks: WebhookSender, fault: WebhookFault | None, retry_scale: float) -> None:
    """Set the sender's knobs as --webhook-fault and --webhook-retry-scale say."""
    webhooks.drop = fault is WebhookFault.drop
    webhooks.payload_error = fault is WebhookFault.payload_error
    webhooks.forge = None if fault in (None, WebhookFault.drop, WebhookFault.payload_error) \
        else str(fault)
    webhooks.time_scale = retry_scale


def emulator(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port; 0 picks a free one.")
    ] = 0,
    latency: Annotated[
        float, typer.Option(min=0.0, help="Seconds from submission to a finished request.")
    ] = 2.0,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", metavar="KEY",
                     help="Accepted FAL_KEY (repeatable). Default: any non-empty key."),
    ] = None,
    locked_key: Annotated[
        list[str] | None,
        typer.Option("--locked-key", metavar="KEY",
                     help="A key of a locked fal account (repeatable): submissions answer 403 "
                     "\"User is locked\", status calls work."),
    ] = None,
    balance: Annotated[
        float, typer.Option(help="The balance GET /v1/account/billing reports, in USD.")
    ] = 10.0,
    fault: Annotated[
        str | None,
        typer.Option(metavar="SPEC",
                     help="Run-wide faults: POINT=ACTION[xCOUNT] items, e.g. "
                     "'submit=429x3,file=slow:5'; 'result=dropx1' (a result call drops once), "
                     "'file=503x1', 'submit=queued:ingress502' (queued, then the answer is "
                     "lost), 'cancel=ignored' (a running request ignores a cancel). "
                     "Grammar: imagen4ctl/emulator/faults.py."),
    ] = None,
    webhook_fault: Annotated[
        WebhookFault | None,
        typer.Option(help="Every webhook delivery broken this way: lost on the way, a wrong "
                     "signature, the body altered after signing, signed 10 minutes ago, "
                     "unsigned, signed by a key the JWKS does not list, or an OK delivery "
                     "without its payload."),
    ] = None,
    webhook_retry_scale: Annotated[
        float, typer.Option(min=0.0, help="Webhook retry delays (10 over about 2 h) times "
                            "this; 0.001 runs them in seconds.")
    ] = 1.0,
    cert_dir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Where ca.pem is written. Default: a temp dir."),
    ] = None,
) -> None:
    """Serve fal's queue API for Imagen 4 locally over HTTPS, until Ctrl-C.

    Prints `export NAME=value` lines that point fal_client and imagen4ctl at it (with
    FAL_WEBHOOK_JWKS_URL, the keys its webhook deliveries are signed with).

    Example: imagen4ctl emulator --port 8443 --latency 1 > fal-emulator.env

    Then, in another shell: set -a; . ./fal-emulator.env; set +a; FAL_KEY=any imagen4ctl ...
    """
    from imagen4ctl.emulator import FalEmulator, FaultSpecError, parse_faults

    try:
        faults = parse_faults(fault)
    except FaultSpecError as e:
        raise typer.BadParameter(str(e), param_hint="--fault") from None

    stop = threading.Event()
    server = FalEmulator(latency=latency, accepted_keys=key or None, faults=faults, host=host,
                         port=port, cert_dir=cert_dir, locked_keys=locked_key or (),
                         balance=balance)
    webhook_knobs(server.webhooks, webhook_fault, webhook_retry_scale)
    try:
        server.start()
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                         hint="Pick another --port, or 0 for a free one.") from e

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # SIGTERM (a service manager, `kill`) stops as cleanly as Ctrl-C; only the main thread may
    # install handlers, so a command run from another thread simply keeps the default.
    previous = (signal.signal(signal.SIGTERM, request_stop)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        for name, value in {**server.env(), "FAL_WEBHOOK_JWKS_URL": server.jwks_url}.items():
            typer.echo(f"export {name}={shlex.quote(value)}")
        keys = "the --key values" if key else "any non-empty FAL_KEY"
        err_console.print(f"fal emulator on {server.base_url} (accepts {keys}"
                          f"{', faults ' + faults.describe() if faults else ''}); Ctrl-C stops it")
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.stop()
    err_console.print("fal emulator stopped")


if __name__ == "__main__":  # `python -m imagen4ctl.commands.emulator`, with the CLI's error rules
    from imagen4ctl.commands._guard import guarded

    typer.run(guarded(emulator))
