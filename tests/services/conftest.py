"""Services built as the CLI builds them, on a real database, the emulator and a local folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imagen4ctl.adapters.fal import FalAdapter
from imagen4ctl.adapters.storage import LocalStorage
from imagen4ctl.db.session import Database
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.services.generation import GenerationService

KEY = "emulator-key-0001"
MODEL = "fal-ai/imagen4/preview"

MakeService = Callable[..., GenerationService]


@pytest.fixture
def make_service(migrated_db: str, fal_emulator: FalEmulator, tmp_path: Path
                 ) -> Iterator[MakeService]:
    """`make_service(with_key=False)` is a service whose context found no fal key."""
    made: list[GenerationService] = []

    def make(*, with_key: bool = True) -> GenerationService:
        service = GenerationService(
            Database(migrated_db), LocalStorage(tmp_path / "images"),
            FalAdapter(KEY) if with_key else None, model=MODEL, prefix="generations/",
            max_image_bytes=10 * 1024 * 1024, trusted_hosts=frozenset({fal_emulator.host}))
        made.append(service)
        return service

    yield make
    for service in made:
        service.database.dispose()
