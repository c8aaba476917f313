"""fix-pending's engine, `Recovery.run`: find, refuse without a key, plan, apply. Against the
emulator, real databases and a local images folder."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import parse_database_url
from imagen4ctl.deadline import Deadline
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.errors import FalCredentialsMissing, UsageError
from imagen4ctl.services.generation import GenerationService, GenerationSpec
from imagen4ctl.services.recovery import Recovery
from imagen4ctl.services.recovery_plan import RecoveryOptions
from tests.commands.test_fix_pending import table
from tests.commands.test_generate import FAST, rows
from tests.factories import bot_row, incident_rows, insert_rows, sql
from tests.services.conftest import KEY, MODEL, MakeService


def recovery(service: GenerationService, fal_emulator: FalEmulator, **options: Any) -> Recovery:
    return Recovery(service, default_model=MODEL, platform_url=fal_emulator.platform_url,
                    fal_key=KEY if service.fal else "",
                    options=RecoveryOptions(**{"older_than": 600.0, **options}))


def completed_at_fal(fal_emulator: FalEmulator, request_id: str | None) -> None:
    assert request_id is not None
    deadline = time.monotonic() + 10
    while fal_emulator.state(request_id) != "COMPLETED":
        assert time.monotonic() < deadline, "fal did not complete the request"
        time.sleep(0.02)


def set_params(db_url: str, params: dict[str, Any] | None) -> None:
    """Every row's `params`, as a bot (or an older imagen4ctl) may have written them."""
    engine = create_engine(parse_database_url(db_url))
    with Session(engine) as session:
        for row in session.scalars(select(Generation)):
            row.params = params
        session.commit()
    engine.dispose()


def never_submitted(db_url: str, **columns: Any) -> None:
    insert_rows(db_url, [bot_row("42", "imagen4", "PENDING", age=timedelta(hours=1),
                                 prompt="sent again", **columns)])


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


# --- what a recovered row keeps: fal's image sizes, as generate stores them ---


@pytest.mark.parametrize("source", ["queue", "platform"])
def test_a_recovered_row_keeps_fal_s_width_and_height(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str, source: str
) -> None:
    if source == "platform":  # the queue's result has expired: fal's Platform API has it
        fal_emulator.result_ttl = fal_emulator.large_result_ttl = 0.05
    service = make_service()
    outcome = service.generate(GenerationSpec(user_id="42", prompt="sized", aspect_ratio="16:9",
                                              num_images=2), Deadline(30.0), wait=False)
    completed_at_fal(fal_emulator, outcome.fal_request_id)
    time.sleep(0.2)
    report = recovery(service, fal_emulator, older_than=0.0, apply=True).run()
    [item] = report.items
    assert (item.action, item.source, item.outcome) == ("recover", source, "done")
    [row] = rows(migrated_db)
    assert row.status == "COMPLETED"
    assert row.params == {"num_images": 2, "images": [{"width": 1408, "height": 768}] * 2}


def test_a_bot_row_without_params_gets_them_for_the_sizes(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    service = make_service()
    outcome = service.generate(GenerationSpec(user_id="42", prompt="the bot's"),
                               Deadline(30.0), wait=False)
    set_params(migrated_db, None)
    completed_at_fal(fal_emulator, outcome.fal_request_id)
    recovery(service, fal_emulator, older_than=0.0, apply=True).run()
    [row] = rows(migrated_db)
    assert (row.status, row.params) == ("COMPLETED",
                                        {"images": [{"width": 1024, "height": 1024}]})


# --- resubmitting: the row's own endpoint, and never with a value dropped ---


def test_a_resubmission_goes_to_the_rows_own_endpoint(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    never_submitted(migrated_db, fal_endpoint=FAST, params={"num_images": 2})
    report = recovery(make_service(), fal_emulator, apply=True, resubmit=True).run()
    assert [(i.action, i.outcome) for i in report.items] == [("resubmit", "done")]
    [submit] = fal_emulator.log.entries("submit")
    assert submit.path == f"/{FAST}"
    [row] = rows(migrated_db)
    assert (row.status, row.fal_endpoint) == ("COMPLETED", FAST)
    assert row.params == {"num_images": 2, "images": [{"width": 1024, "height": 1024}] * 2}


@pytest.mark.parametrize("endpoint", [None, "fal-ai/imagen4/preview/v0-retired"])
def test_a_row_without_a_known_endpoint_is_resubmitted_to_imagen4_model(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str,
    endpoint: str | None,
) -> None:
    never_submitted(migrated_db, fal_endpoint=endpoint)
    report = recovery(make_service(), fal_emulator, apply=True, resubmit=True).run()
    assert [(i.action, i.outcome) for i in report.items] == [("resubmit", "done")]
    [submit] = fal_emulator.log.entries("submit")
    assert submit.path == f"/{MODEL}"
    [row] = rows(migrated_db)
    # a later run asks IMAGEN4_MODEL about the request, not the retired endpoint
    assert (row.status, row.fal_endpoint) == ("COMPLETED", MODEL if endpoint else None)


@pytest.mark.parametrize(("endpoint", "params", "reason"), [
    (None, {"num_images": 1, "negative_prompt": "blur"},
     "fal-ai/imagen4/preview does not take the row's negative_prompt"),
    (FAST, {"resolution": "2K"}, "fal-ai/imagen4/preview/fast does not take the row's resolution"),
])
def test_a_row_holding_what_its_endpoint_does_not_take_is_left_with_the_reason(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str,
    endpoint: str | None, params: dict[str, Any], reason: str,
) -> None:
    never_submitted(migrated_db, fal_endpoint=endpoint, params=params)
    before = table(migrated_db)
    report = recovery(make_service(), fal_emulator, apply=True, resubmit=True).run()
    [item] = report.items
    assert (item.action, item.outcome) == ("skip", "skipped")
    assert item.error == f"not resubmitted: {reason} — never submitted"
    assert not report.ok
    assert table(migrated_db) == before
    assert fal_emulator.log.submission_count() == 0
    # not asked to resubmit, it is failed as any row never submitted
    failed = recovery(make_service(), fal_emulator, apply=True).run()
    assert [(i.action, i.error, i.outcome) for i in failed.items] == [
        ("fail", "never submitted", "done")]


def test_a_lost_submission_of_a_row_that_cannot_be_sent_again_is_still_adopted(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    """Found by endpoint, time and prompt, whatever its params: it is already paid for."""
    service = make_service()
    outcome = service.generate(
        GenerationSpec(user_id="42", prompt="lost answer [fault:submit=queued:ingress502]"),
        Deadline(30.0))
    assert (outcome.status, outcome.fal_request_id) == ("PENDING", None)
    set_params(migrated_db, {"num_images": 1, "negative_prompt": "blur"})
    [request_id] = fal_emulator.request_ids()
    completed_at_fal(fal_emulator, request_id)
    report = recovery(service, fal_emulator, older_than=0.0, apply=True, force=True).run()
    [item] = report.items
    assert (item.action, item.fal_request_id, item.outcome) == ("recover", request_id, "done")
    assert fal_emulator.log.submission_count() == 1
    [row] = rows(migrated_db)
    assert (row.status, row.fal_request_id) == ("COMPLETED", request_id)
