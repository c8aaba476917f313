"""`imagen4ctl emulator`: its help, its option checks, and a real run in a subprocess."""

from __future__ import annotations

import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
from typer.testing import CliRunner

from imagen4ctl.commands.emulator import emulator
from imagen4ctl.errors import UsageError
from tests.conftest import interruptible
from tests.emulator._helpers import MODEL, auth, png_size


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


def test_the_command_serves_until_interrupted(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "imagen4ctl.commands.emulator", "--latency", "0.1",
         "--key", "cli-key", "--cert-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(4)]
        env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines)
        assert set(env) == {"FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE",
                            "FAL_PLATFORM_API_URL"}
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
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert "stopped" in stderr
