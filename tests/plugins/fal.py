"""pytest plugin: one fal emulator per test session, wired in before fal_client is imported.

fal_client reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST when it is imported, so the emulator
starts in `pytest_configure` and its variables go into `os.environ` there. Tests that talk
to fal ask for the `fal_emulator` fixture, which puts the knobs back after each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from imagen4ctl.emulator import FalEmulator

if TYPE_CHECKING:
    import fal_client

# Fast enough for a suite, slow enough that the queue and progress phases are observable.
SESSION_LATENCY = 0.2
TEST_KEY = "emulator-test-key"

_emulator: FalEmulator | None = None
_env: dict[str, str] = {}
_saved_env: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    global _emulator, _env
    if _emulator is not None:
        return
    _emulator = FalEmulator(latency=SESSION_LATENCY).start()
    _env = _emulator.env()
    for name, value in _env.items():
        _saved_env[name] = os.environ.get(name)
        os.environ[name] = value


def pytest_unconfigure(config: pytest.Config) -> None:
    global _emulator
    if _emulator is None:
        return
    _emulator.stop()
    _emulator = None
    for name, value in _saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_env.clear()


def emulator_env() -> dict[str, str]:
    """The variables set at configure time (FAL_RUN_HOST, ..., SSL_CERT_FILE), for re-setting."""
    return dict(_env)


@pytest.fixture(scope="session")
def fal_emulator_session() -> FalEmulator:
    """The session's emulator as it is: no reset between tests."""
    if _emulator is None:
        raise RuntimeError("tests.plugins.fal is not configured (load it as a pytest plugin)")
    return _emulator


@pytest.fixture
def fal_emulator(fal_emulator_session: FalEmulator) -> Iterator[FalEmulator]:
    """The session's emulator with an empty log; knobs go back to defaults afterwards."""
    fal_emulator_session.reset()
    yield fal_emulator_session
    fal_emulator_session.restore_defaults()


@pytest.fixture
def fal_sync_client(fal_emulator: FalEmulator) -> fal_client.SyncClient:
    """A real fal_client.SyncClient with a fixed key, talking to the emulator."""
    import fal_client  # only now: its hosts are read at import

    return fal_client.SyncClient(key=TEST_KEY)
