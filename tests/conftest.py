"""Test isolation and the real servers (PostgreSQL, SeaweedFS S3, the fal emulator).

No test reads the developer's environment: every variable the settings module knows is
cleared, HOME and the working directory are a tmp dir. fal_client reads its hosts at import,
so the fal plugin starts the emulator before anything imports it and its env is kept here.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("COLUMNS", "200")  # Rich tables at a readable width in captured output

pytest_plugins = ["tests.plugins.db", "tests.plugins.s3", "tests.plugins.fal"]

CANARY = "canary-Zq8Xv2Lp9Wm4Rt7Yk3Hs6Jd1"


def canary_pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets or (CANARY,):
        for piece in canary_pieces(secret):
            assert piece not in text, f"a piece of a secret leaked: {piece!r}"


def interruptible() -> None:
    """`preexec_fn` of a server the test stops with SIGINT, as Ctrl-C would. A shell that
    starts the tests in the background hands SIGINT down ignored, and Python keeps it so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    from imagen4ctl.settings import VARIABLES
    from tests.plugins.fal import emulator_env

    for var in VARIABLES:
        monkeypatch.delenv(var.name, raising=False)
    for name in list(os.environ):
        if name.startswith(("FAL", "MINIO", "AWS_", "IMAGEN4", "DATABASE")):
            monkeypatch.delenv(name, raising=False)
    for name, value in emulator_env().items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FAL_HOME_DIR", str(home / ".fal"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> object:
        import json

        return json.loads(self.stdout)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run imagen4ctl in-process like a user would: `cli("check-config", env={...})`."""
    from typer.testing import CliRunner

    from imagen4ctl.cli import app

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> CliResult:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def s3_env(s3_bucket: object) -> dict[str, str]:
    """The variables that point imagen4ctl at a fresh bucket on the test S3 server."""
    server = s3_bucket.server  # type: ignore[attr-defined]
    return {
        "MINIO_ENDPOINT": server.endpoint,
        "MINIO_ACCESS_KEY": server.access_key,
        "MINIO_SECRET_KEY": server.secret_key,
        "MINIO_BUCKET": s3_bucket.name,  # type: ignore[attr-defined]
    }
