"""What several commands' tests share."""

from __future__ import annotations

import pytest

from imagen4ctl.emulator import FalEmulator

KEY = "emulator-key-0001"


@pytest.fixture
def locked_key(fal_emulator: FalEmulator) -> None:
    """fal treats the tests' key as a locked account's: status works, submissions get 403."""
    fal_emulator.locked_keys = {KEY}
