"""`imagen4ctl emulator`: its help, its option checks, and a real run in a subprocess."""

from __future__ import annotations

import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from imagen4ctl.adapters.fal_webhook import WebhookRejected, WebhookVerifier
from imagen4ctl.commands.emulator import WebhookFault, emulator, webhook_knobs
from imagen4ctl.emulator.webhooks import WebhookSender
from imagen4ctl.errors import UsageError
from tests.conftest import interruptible
from tests.emulator._helpers import MODEL, Received, Receiver, auth, png_size, receiving


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("emulator")(emulator)
    return app


def test_help_explains_the_options_with_an_example() -> None:
    result = CliRunner().invoke(_app(), ["--help"])
    assert result.exit_code == 0
    for text in ("--host", "--port", "--latency", "--key", "--fault", "--cert-dir",
                 "Example: imagen4ctl emulator"):
        assert text in result.output


def test_a_bad_fault_spec_is_a_usage_error() -> None:
    result = CliRunner().invoke(_app(), ["--fault", "submit=teapot"])
    assert result.exit_code == 2
    assert "submit=teapot" in result.output


def test_a_busy_port_is_a_usage_error_with_a_hint() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = CliRunner().invoke(_app(), ["--port", str(port)])
    assert isinstance(result.exception, UsageError)
    assert f"cannot listen on 127.0.0.1:{port}" in result.exception.message
    assert result.exception.hint == "Pick another --port, or 0 for a free one."


@contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[dict[str, str]]:
    """`imagen4ctl emulator` in a subprocess: the variables it exported; interrupted after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imagen4ctl.commands.emulator", "--latency", "0.1",
         "--key", "cli-key", "--cert-dir", str(tmp_path), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(5)]
        yield dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert "stopped" in stderr


def delivered(env: dict[str, str], receiver: Receiver) -> Received:
    """Submit one request to the emulator at `env`, with `receiver` as its webhook; its one
    delivery."""
    tls = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
    with httpx.Client(verify=tls, timeout=10) as client:
        client.post(f"https://{env['FAL_QUEUE_RUN_HOST']}/{MODEL}",
                    params={"fal_webhook": receiver.url}, json={"prompt": "a kite"},
                    headers=auth("cli-key")).raise_for_status()
    return receiver.wait_for(1)[0]


def test_the_command_serves_until_interrupted(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(tmp_path) as env, receiving() as receiver:
        assert set(env) == {"FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE",
                            "FAL_PLATFORM_API_URL", "FAL_WEBHOOK_JWKS_URL"}
        assert env["SSL_CERT_FILE"] == str(tmp_path / "ca.pem")
        assert env["FAL_RUN_HOST"] == env["FAL_QUEUE_RUN_HOST"]

        tls = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
        with httpx.Client(verify=tls, timeout=10) as client:
            base = f"https://{env['FAL_QUEUE_RUN_HOST']}"
            refused = client.post(f"{base}/{MODEL}", json={"prompt": "x"}, headers=auth("other"))
            assert refused.status_code == 401
            submitted = client.post(f"{base}/{MODEL}", json={"prompt": "a kite"},
                                    headers=auth("cli-key")).json()
            while client.get(submitted["status_url"], headers=auth("cli-key")).status_code != 200:
                time.sleep(0.02)
            result = client.get(submitted["response_url"], headers=auth("cli-key")).json()
            image = client.get(result["images"][0]["url"])
            assert png_size(image.content) == (1024, 1024)

        # What a worker with --webhook-url needs: deliveries signed by the exported keys.
        delivery = delivered(env, receiver)
        monkeypatch.setenv("SSL_CERT_FILE", env["SSL_CERT_FILE"])
        WebhookVerifier(env["FAL_WEBHOOK_JWKS_URL"]).verify(delivery.headers, delivery.body)
        assert delivery.json()["status"] == "OK"


@pytest.mark.parametrize(("fault", "refusal"), [
    ("unsigned", "unsigned delivery"),
    ("signature", "matches none of fal's keys"),
])
def test_a_webhook_fault_breaks_every_delivery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              fault: str, refusal: str) -> None:
    with serving(tmp_path, "--webhook-fault", fault) as env, receiving() as receiver:
        delivery = delivered(env, receiver)
        monkeypatch.setenv("SSL_CERT_FILE", env["SSL_CERT_FILE"])
        with pytest.raises(WebhookRejected, match=refusal):
            WebhookVerifier(env["FAL_WEBHOOK_JWKS_URL"]).verify(delivery.headers, delivery.body)


@pytest.mark.parametrize(("fault", "knobs"), [
    (None, (False, False, None)),
    ("drop", (True, False, None)),
    ("payload-error", (False, True, None)),
    *[(forged, (False, False, forged))
      for forged in ("signature", "body", "stale", "unsigned", "key")],
])
def test_each_webhook_fault_sets_the_emulators_knob(
        fault: str | None, knobs: tuple[bool, bool, str | None]) -> None:
    """The knobs' effects are tested in tests/emulator/test_webhooks.py."""
    sender = WebhookSender()
    webhook_knobs(sender, None if fault is None else WebhookFault(fault), 0.001)
    assert (sender.drop, sender.payload_error, sender.forge) == knobs
    assert sender.time_scale == 0.001


def test_an_unknown_webhook_fault_is_a_usage_error() -> None:
    result = CliRunner().invoke(_app(), ["--webhook-fault", "teapot"])
    assert result.exit_code == 2
    assert "teapot" in result.output
