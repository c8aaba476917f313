"""A locked fal account in a batch: the first refusal stops the submissions, every row gets a
decision, and what was already running is still collected. Real fal_client, the emulator,
real databases."""

from __future__ import annotations

import threading
import time

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import parse_database_url
from imagen4ctl.emulator import FalEmulator
from imagen4ctl.errors import FalAccountLocked, GenerationFailed
from imagen4ctl.services.generation import NOT_SUBMITTED_LOCKED, GenerationSpec
from tests.services.conftest import KEY, MakeService

LOCKED = "fal account locked: exhausted balance — top up in fal's billing dashboard"


def rows(db_url: str) -> list[Generation]:
    engine = create_engine(parse_database_url(db_url))
    with Session(engine) as session:
        found = list(session.scalars(select(Generation).order_by(Generation.id)))
    engine.dispose()
    return found


def specs(count: int) -> list[GenerationSpec]:
    return [GenerationSpec(user_id="42", prompt=f"prompt {n}") for n in range(count)]


def test_a_locked_account_costs_one_attempt_and_decides_every_row(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    fal_emulator.locked_keys = {KEY}
    outcomes = make_service().run_batch(specs(20), concurrency=4, timeout=30)

    assert fal_emulator.log.submission_count() == 1
    first, *rest = outcomes
    assert isinstance(first.exception, FalAccountLocked) and first.error == LOCKED
    assert all(o.error == NOT_SUBMITTED_LOCKED for o in rest)
    assert all(isinstance(o.exception, GenerationFailed) for o in rest)
    stored = rows(migrated_db)
    assert [r.status for r in stored] == ["FAILED"] * 20
    assert stored[0].error == LOCKED and stored[0].submit_started_at is not None
    assert {r.error for r in stored[1:]} == {NOT_SUBMITTED_LOCKED}
    assert all(r.submit_started_at is None and r.fal_request_id is None for r in stored[1:])


def test_a_lock_mid_batch_leaves_the_running_ones_to_finish(
    make_service: MakeService, fal_emulator: FalEmulator, migrated_db: str
) -> None:
    """"Exactly ONE generation succeeds, then the next call is blocked" (fal-ai/fal #1163)."""
    fal_emulator.latency = 1.0
    service = make_service()
    locked_after_first: list[str] = []

    def lock_once_submitted() -> None:
        deadline = time.monotonic() + 10
        while not fal_emulator.request_ids() and time.monotonic() < deadline:
            time.sleep(0.005)
        fal_emulator.locked_keys = {KEY}
        locked_after_first.extend(fal_emulator.request_ids())

    locker = threading.Thread(target=lock_once_submitted)
    locker.start()
    outcomes = service.run_batch(specs(6), concurrency=1, timeout=30)
    locker.join()

    assert len(locked_after_first) == 1
    statuses = [o.status for o in outcomes]
    assert statuses[0] == "COMPLETED"  # status and result still work for a locked account
    assert statuses[1:] == ["FAILED"] * 5
    assert fal_emulator.log.submission_count() == 2  # the one that ran, and the refused one
    assert outcomes[1].error == LOCKED
    assert [o.error for o in outcomes[2:]] == [NOT_SUBMITTED_LOCKED] * 4
    assert [r.status for r in rows(migrated_db)] == ["COMPLETED"] + ["FAILED"] * 5
