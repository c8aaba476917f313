"""seed-gallery's plan: the five verification images, minus what is done or in flight."""

from __future__ import annotations

import pytest

from imagen4ctl.errors import UsageError
from imagen4ctl.services.seeding import GALLERY, plan_seed
from tests.factories import bot_row, insert_rows
from tests.services.conftest import MakeService


def test_a_rerun_skips_pairs_completed_or_in_flight(make_service: MakeService,
                                                    migrated_db: str) -> None:
    insert_rows(migrated_db, [
        bot_row("42", "imagen4", "COMPLETED", prompt="A cat playing with a ball",
                aspect_ratio="3:4"),
        bot_row("42", "imagen4", "PROCESSING", prompt="Cosmic landscape", aspect_ratio="16:9"),
        bot_row("42", "imagen4", "FAILED", prompt="An old castle", aspect_ratio="3:4"),
        bot_row("7", "imagen4", "COMPLETED", prompt="Blooming garden in spring"),
        bot_row("42", "imagen4", "COMPLETED", prompt="Beautiful sunset over the mountains",
                aspect_ratio="16:9"),  # another ratio: not the same image
    ])
    plan = plan_seed(make_service(), "42", None, force=False)
    assert (plan.total, plan.skipped) == (5, 2)
    assert plan.todo == [GALLERY[0], GALLERY[3], GALLERY[4]]
    assert [(s.user_id, s.aspect_ratio, s.prompt) for s in plan.specs()] == [
        ("42", r, p) for r, p in plan.todo]
    forced = plan_seed(make_service(), "42", None, force=True)
    assert forced.todo == list(GALLERY) and forced.skipped == 0


def test_a_bad_pair_is_refused_only_when_specs_are_made(make_service: MakeService) -> None:
    plan = plan_seed(make_service(), "42", [("2:1", "too wide")], force=False)
    assert plan.todo == [("2:1", "too wide")]
    with pytest.raises(UsageError):
        plan.specs()
