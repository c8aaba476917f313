"""fix-pending's engine, `Recovery.run`: find, refuse without a key, plan, apply. Against the
emulator, real databases and a local images folder."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.errors import FalCredentialsMissing, UsageError
from imagen4ctl.services.generation import GenerationService, GenerationSpec
from imagen4ctl.services.recovery import Recovery
from imagen4ctl.services.recovery_plan import RecoveryOptions
from tests.commands.test_fix_pending import sql, table
from tests.factories import bot_row, incident_rows, insert_rows
from tests.services.conftest import KEY, MODEL, MakeService


def recovery(service: GenerationService, fal_emulator: FalEmulator, **options: Any) -> Recovery:
    return Recovery(service, default_model=MODEL, platform_url=fal_emulator.platform_url,
                    fal_key=KEY if service.fal else "",
                    options=RecoveryOptions(**{"older_than": 600.0, **options}))


def test_a_dry_run_plans_and_changes_nothing(make_service: MakeService, fal_emulator: FalEmulator,
                                             migrated_db: str) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    before = table(migrated_db)
    report = recovery(make_service(), fal_emulator).run()
    assert report.dry_run and report.ok
    assert report.counts() == {"recover": 0, "wait": 0, "fail": 5, "resubmit": 0,
                               "delete": 0, "skip": 0}
    assert {(i.outcome, i.error) for i in report.items} == {("planned", "never submitted")}
    assert table(migrated_db) == before


def test_apply_fails_never_submitted_rows_with_the_reason(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    report = recovery(make_service(), fal_emulator, apply=True).run()
    assert not report.dry_run and report.ok
    assert {i.outcome for i in report.items} == {"done"}
    assert sql(migrated_db, "SELECT status, error, claimed_by FROM generations "
               "WHERE kind = 'imagen4'") == [("FAILED", "never submitted", None)] * 5


def test_without_a_key_stuck_rows_stop_the_run_before_any_row(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    before = table(migrated_db)
    with pytest.raises(FalCredentialsMissing) as caught:
        recovery(make_service(with_key=False), fal_emulator, apply=True).run()
    assert caught.value.message == "no fal key: FAL_KEY is not set (no row was touched)"
    assert caught.value.hint == "Set FAL_KEY (or FAL_API_KEY); see `imagen4ctl check-config`."
    assert table(migrated_db) == before


def test_without_a_key_nothing_stuck_is_not_an_error(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    insert_rows(migrated_db, [bot_row("1", "imagen4", "PENDING")])  # a minute old: not stuck
    report = recovery(make_service(with_key=False), fal_emulator).run()
    assert report.items == [] and report.ok


def test_a_completed_request_is_recovered_from_the_queue(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str, tmp_path: Path
) -> None:
    service = make_service()
    outcome = service.generate(GenerationSpec(user_id="42", prompt="left behind"),
                               Deadline(30.0), wait=False)
    assert outcome.status == "PROCESSING"
    time.sleep(0.6)  # the emulator finishes it meanwhile
    planned = recovery(service, fal_emulator, older_than=0.0).run()
    [item] = planned.items
    assert (item.action, item.source, item.fal_status) == ("recover", "queue", "COMPLETED")
    applied = recovery(service, fal_emulator, older_than=0.0, apply=True).run()
    assert [i.outcome for i in applied.items] == ["done"]
    [(status, keys)] = sql(migrated_db, "SELECT status, result_urls FROM generations")
    assert status == "COMPLETED" and "generations/42/" in str(keys)
    assert (tmp_path / "images" / f"generations/42/{outcome.id}/0.png").is_file()


def test_delete_with_a_backup_keeps_every_row_in_the_file(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str, tmp_path: Path
) -> None:
    insert_rows(migrated_db, incident_rows("42"))
    backup = tmp_path / "deep" / "stuck.jsonl"
    report = recovery(make_service(), fal_emulator, apply=True, delete=True,
                      backup=backup).run()
    assert report.counts()["delete"] == 5 and {i.outcome for i in report.items} == {"done"}
    assert len(backup.read_text().splitlines()) == 5
    assert sql(migrated_db, "SELECT count(*) FROM generations WHERE kind = 'imagen4'") == [(0,)]


def test_options_refuse_a_delete_without_a_backup() -> None:
    with pytest.raises(UsageError, match="--delete needs --backup FILE"):
        RecoveryOptions(older_than=0.0, delete=True)


def test_rows_newer_than_the_threshold_are_not_candidates(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    insert_rows(migrated_db, [bot_row("1", "imagen4", "PENDING", age=timedelta(minutes=5)),
                              bot_row("2", "imagen4", "PENDING", age=timedelta(hours=1))])
    report = recovery(make_service(), fal_emulator).run()
    assert [i.user_id for i in report.items] == ["2"]
