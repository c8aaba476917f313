"""reconcile's engine, `Reconciler.run`: rows against objects and back, on a local images
folder and real databases; `--fix` needs a fal key before it looks at anything."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl.errors import FalCredentialsMissing
from imagen4ctl.services.generation import GenerationService
from imagen4ctl.services.reconcile import Reconciler
from tests.factories import bot_row, insert_rows
from tests.services.conftest import MakeService
from tests.services.test_recovery import recovery

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def reconciler(service: GenerationService, fal_emulator: Any, *, fix: bool = False) -> Reconciler:
    return Reconciler(recovery(service, fal_emulator, older_than=0.0, apply=fix),
                      prefix="generations/", fix=fix)


def put(images: Path, key: str, *, age: float = 0.0) -> None:
    path = images / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG)
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


def test_every_kind_of_problem_is_reported(make_service: MakeService, fal_emulator: Any,
                                           migrated_db: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    put(images, "generations/1/1/0.png")
    put(images, "generations/9/99/0.png", age=7200)  # no row names it
    put(images, "avatars/1/0.png", age=7200)  # the bot's: not ours to judge
    insert_rows(migrated_db, [
        bot_row("1", "imagen4", "COMPLETED", id=1, result_urls=["generations/1/1/0.png"]),
        bot_row("1", "imagen4", "COMPLETED", id=2, result_urls=["generations/1/2/0.png"]),
        bot_row("1", "imagen4", "COMPLETED", id=3, result_urls=[]),
        bot_row("1", "imagen4", "COMPLETED", id=4, result_urls=["https://cdn.example/x.png"]),
    ])
    report = reconciler(make_service(), fal_emulator).run()
    assert (report.rows_checked, report.objects_checked) == (4, 2)
    assert sorted((p.type, p.id, p.key) for p in report.items) == [
        ("empty_result", 3, None), ("fal_url", 4, "https://cdn.example/x.png"),
        ("missing_object", 2, "generations/1/2/0.png"),
        ("orphan_object", None, "generations/9/99/0.png")]
    assert not report.ok and {p.action for p in report.items} == {"none"}
    assert (images / "generations/9/99/0.png").exists()  # without fix nothing is touched


def test_fix_deletes_only_old_orphans(make_service: MakeService, fal_emulator: Any,
                                      tmp_path: Path) -> None:
    images = tmp_path / "images"
    put(images, "generations/9/98/0.png")  # young: maybe an upload in flight
    put(images, "generations/9/99/0.png", age=7200)
    report = reconciler(make_service(), fal_emulator, fix=True).run()
    assert sorted((p.key, p.action, p.fixed) for p in report.items) == [
        ("generations/9/98/0.png", "left", False), ("generations/9/99/0.png", "deleted", True)]
    assert not (images / "generations/9/99/0.png").exists()


def test_fix_without_a_key_stops_before_looking(make_service: MakeService, fal_emulator: Any,
                                                tmp_path: Path) -> None:
    put(tmp_path / "images", "generations/9/99/0.png", age=7200)
    with pytest.raises(FalCredentialsMissing) as caught:
        reconciler(make_service(with_key=False), fal_emulator, fix=True).run()
    assert caught.value.message == ("no fal key: FAL_KEY is not set (--fix needs it to fetch "
                                    "images again)")
    assert (tmp_path / "images" / "generations/9/99/0.png").exists()


def test_without_fix_no_key_is_needed(make_service: MakeService, fal_emulator: Any,
                                      tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    report = reconciler(make_service(with_key=False), fal_emulator).run()
    assert report.ok and report.rows_checked == report.objects_checked == 0
