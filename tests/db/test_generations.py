"""The one way into `generations`: its row type, and its statements on both databases."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from imagen4ctl.db import generations
from imagen4ctl.db.generations import COLUMNS, GenerationRow, NewGeneration, Statements
from imagen4ctl.db.session import Database
from imagen4ctl.db.tables import generations as table
from tests.factories import ago, bot_row, insert_rows


def test_the_row_type_has_every_column_in_the_tables_order() -> None:
    assert COLUMNS == tuple(c.name for c in table.columns)
    assert tuple(f.name for f in fields(GenerationRow)) == (*COLUMNS, "read_at")


def test_ages_count_from_when_the_row_was_read() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    row = GenerationRow(1, created_at=now - timedelta(hours=2, seconds=0.5),
                        updated_at=now + timedelta(seconds=5), read_at=now)
    assert (row.age_seconds, row.state_seconds) == (7200, 0)  # a clock behind the writer's: 0
    assert GenerationRow(2, read_at=now).age_seconds == 0
    with pytest.raises(AssertionError, match="without a clock"):
        _ = GenerationRow(3, created_at=now).age_seconds


def test_the_report_statements_are_the_benchmarked_ones() -> None:
    """bench/stats.py replays these through psql and EXPLAIN: a change must be deliberate."""
    fleet, user = Statements(False, False), Statements(True, False)
    assert fleet.counts == "SELECT kind, status, count(*) FROM generations GROUP BY kind, status"
    assert fleet.users == ("SELECT count(*) FROM (SELECT DISTINCT user_id FROM generations) "
                           "AS scoped")
    assert user.stuck == (
        "SELECT id, user_id, kind, status, fal_request_id, created_at, updated_at FROM "
        "generations WHERE user_id = :user_id AND status IN ('PENDING', 'PROCESSING') AND "
        "updated_at < :cutoff ORDER BY created_at, id LIMIT :limit")
    assert Statements(True, True).recent == (
        "SELECT id, kind, prompt, result_urls FROM generations WHERE user_id = :user_id AND "
        "kind = :kind AND status = 'COMPLETED' ORDER BY updated_at DESC, id DESC LIMIT :recent")


def test_the_seeding_lock_key_is_stable() -> None:
    """Runs of different versions must take the same PostgreSQL advisory lock."""
    assert generations.lock_key("42") == 1439091265015293712


def test_stuck_rows_stream_oldest_first_with_aware_times_and_decoded_params(
        migrated_db: str) -> None:
    insert_rows(migrated_db, [
        bot_row("1", "imagen4", "PENDING", age=timedelta(hours=1), params={"seed": 7}),
        bot_row("2", "imagen4", "PROCESSING", age=timedelta(hours=3), fal_request_id="r-2"),
        bot_row("3", "imagen4", "PENDING", age=timedelta(minutes=1)),  # not stuck yet
        bot_row("4", "avatar", "PENDING", age=timedelta(hours=2)),  # another kind
        bot_row("5", "imagen4", "COMPLETED", age=timedelta(hours=4)),
    ])
    db = Database(migrated_db)
    rows = list(generations.stream_stuck(db, kind="imagen4", cutoff=ago(minutes=30)))
    assert [(r.user_id, r.status, r.fal_request_id) for r in rows] == \
        [("2", "PROCESSING", "r-2"), ("1", "PENDING", None)]
    assert rows[1].params == {"seed": 7} and rows[0].params is None
    assert all(r.created_at is not None and r.created_at.tzinfo is UTC for r in rows)
    only = generations.stream_stuck(db, kind="imagen4", cutoff=ago(minutes=30), user_id="1",
                                    limit=5)
    assert [r.user_id for r in only] == ["1"]
    db.dispose()


def test_rows_handed_over_to_fix_pending_are_stuck_at_once_when_asked(migrated_db: str) -> None:
    """A generation that stopped on a fault leaves its row PROCESSING with its request id and
    last error, and tells the user to run fix-pending: that run must find it, however recent."""
    insert_rows(migrated_db, [
        bot_row("1", "imagen4", "PROCESSING", fal_request_id="r-1", error="result: dropped"),
        bot_row("2", "imagen4", "PROCESSING", fal_request_id="r-2"),  # still being waited on
        bot_row("3", "imagen4", "PENDING", error="submission state unknown: lost"),
        bot_row("4", "imagen4", "PROCESSING", age=timedelta(hours=1), fal_request_id="r-4"),
    ])
    db = Database(migrated_db)
    cutoff = ago(minutes=30)
    handed = generations.stream_stuck(db, kind="imagen4", cutoff=cutoff, handed_over=True)
    assert sorted(r.user_id for r in handed) == ["1", "4"]
    aged = generations.stream_stuck(db, kind="imagen4", cutoff=cutoff)
    assert [r.user_id for r in aged] == ["4"]
    db.dispose()


def test_insert_new_skips_what_is_done_or_in_flight(migrated_db: str) -> None:
    insert_rows(migrated_db, [bot_row("7", "imagen4", "COMPLETED", prompt="a"),
                              bot_row("7", "imagen4", "FAILED", prompt="b")])
    db = Database(migrated_db)
    rows = [NewGeneration("7", "imagen4", prompt, "1:1") for prompt in ("a", "b", "b", "c")]
    ids = generations.insert_new(db, rows)
    assert ids[0] is None and ids[2] is None  # done; the same spec twice in one call
    assert ids[1] is not None and ids[3] is not None
    assert generations.taken_pairs(db, "7", "imagen4") == {("a", "1:1"), ("b", "1:1"),
                                                           ("c", "1:1")}
    db.dispose()


def test_a_claim_holds_the_row_until_released(migrated_db: str) -> None:
    db = Database(migrated_db)
    [row_id] = generations.insert_many(db, [NewGeneration("8", "imagen4", "p", "1:1")])
    now = datetime.now(UTC)

    def claim(owner: str, status: str = "PENDING") -> bool:
        return generations.claim(db, row_id, owner=owner, status=status, fal_request_id=None,
                                 submit_marked=False, now=now,
                                 stale_before=now - timedelta(minutes=15),
                                 is_dead=lambda _owner: False)

    assert not claim("a", status="PROCESSING")  # not as read
    assert claim("a") and not claim("b")
    assert not generations.change_claimed(db, row_id, expected="PENDING", owner="b",
                                          error="not ours")
    assert generations.change_claimed(db, row_id, expected="PENDING", owner="a",
                                      status="FAILED", error="ours")
    generations.release(db, row_id, owner="a")
    assert claim("b", status="FAILED")
    row = generations.get(db, row_id)
    assert row is not None and (row.status, row.error, row.claimed_by) == ("FAILED", "ours", "b")
    assert not generations.delete_claimed(db, row_id, expected="PENDING", owner="b")
    assert generations.delete_claimed(db, row_id, expected="FAILED", owner="b")
    assert generations.get(db, row_id) is None
    db.dispose()


def test_a_live_claim_is_read_as_the_claim_statements_take_it(migrated_db: str) -> None:
    """Recovery and the webhooks decide from a row already read whether a live run holds it;
    they must agree with `claim`, which decides in SQL, at the timeout's very edge too."""
    db = Database(migrated_db)
    now = datetime.now(UTC).replace(microsecond=0)
    timeout = timedelta(seconds=60)
    for renewed, owner_dead, held in [(now - timeout, False, True),
                                      (now - timeout - timedelta(seconds=1), False, False),
                                      (now, True, False)]:
        [row_id] = generations.insert_many(db, [NewGeneration("8", "imagen4", "p", "1:1")])
        assert generations.claim(db, row_id, owner=OTHER, status="PENDING", fal_request_id=None,
                                 submit_marked=False, now=renewed, stale_before=renewed,
                                 is_dead=lambda _owner: False)
        row = generations.get(db, row_id)
        assert row is not None and row.claimed_at == renewed

        def is_dead(owner: str | None, dead: bool = owner_dead) -> bool:
            return dead

        assert row.held_by_live_claim(now, timeout, is_dead) is held
        taken = generations.claim(db, row_id, owner=OWNER, status="PENDING",
                                  fal_request_id=None, submit_marked=False, now=now,
                                  stale_before=now - timeout, is_dead=is_dead)
        assert taken is not held
    assert not GenerationRow(1).held_by_live_claim(now, timeout, lambda _owner: False)
    # A claim with no date (no statement of ours writes one) is held, as in SQL.
    insert_rows(migrated_db, [bot_row("8", "imagen4", "PENDING", claimed_by=OTHER)])
    undated = generations.get(db, 4)
    assert undated is not None and (undated.claimed_by, undated.claimed_at) == (OTHER, None)
    assert undated.held_by_live_claim(now, timeout, lambda _owner: False)
    assert not generations.claim(db, 4, owner=OWNER, status="PENDING", fal_request_id=None,
                                 submit_marked=False, now=now, stale_before=now - timeout,
                                 is_dead=lambda _owner: False)
    db.dispose()


# --- the worker fleet's statements (claims.py) ---

OWNER, OTHER = "here:1:aaaa", "there:2:bbbb"


def claimed_row(status: str, owner: str = OWNER, **extra: Any) -> dict[str, Any]:
    """A row of user 1 that `owner` claimed a second ago."""
    return bot_row("1", "imagen4", status, claimed_by=owner, claimed_at=ago(seconds=1), **extra)


def test_the_fleet_lock_key_is_stable() -> None:
    """Workers of different versions must take the same PostgreSQL advisory lock."""
    from imagen4ctl.db.generations.claims import fleet_lock_key

    assert fleet_lock_key() == fleet_lock_key() > 0 and fleet_lock_key() < 2**63


def test_queued_rows_are_claimed_oldest_first_up_to_the_fleets_cap(migrated_db: str) -> None:
    now = datetime.now(UTC)
    insert_rows(migrated_db, [
        bot_row("1", "imagen4", "PROCESSING", fal_request_id="at-fal", age=timedelta(hours=2)),
        bot_row("1", "imagen4", "PENDING", submit_started_at=ago(seconds=3)),  # maybe at fal
        bot_row("1", "imagen4", "PENDING", prompt="newer", age=timedelta(minutes=1)),
        bot_row("1", "imagen4", "PENDING", prompt="older", age=timedelta(minutes=5)),
        bot_row("1", "imagen4", "PENDING", prompt="oldest", age=timedelta(minutes=9)),
        bot_row("1", "imagen4", "PENDING", prompt="gave up", error="x", age=timedelta(hours=1)),
        bot_row("1", "avatar", "PENDING", prompt="not this kind", age=timedelta(hours=1)),
    ])
    db = Database(migrated_db)
    try:
        def claim(cap: int, limit: int = 10, owner: str = OWNER) -> tuple[int, list[str]]:
            busy, rows = generations.claim_queued(
                db, kind="imagen4", owner=owner, now=now, cap=cap, limit=limit,
                stale_before=now - timedelta(seconds=60))
            return busy, [r.prompt for r in rows]

        assert claim(cap=2) == (2, [])  # two already at fal (or maybe): none more
        assert claim(cap=4) == (2, ["oldest", "older"])
        # Claimed rows count at once, before their submission is even marked.
        assert generations.in_flight(db, stale_before=now - timedelta(seconds=60)) == 4
        assert claim(cap=9, limit=5, owner=OTHER) == (4, ["newer"])  # held ones are not free
        # A dead owner's claims are free again, and no longer count.
        assert generations.in_flight(db, stale_before=now - timedelta(seconds=60),
                                     dead=[OWNER]) == 3
        _, rows = generations.claim_queued(
            db, kind="imagen4", owner=OTHER, now=now, cap=9, limit=5,
            stale_before=now - timedelta(seconds=60), dead=[OWNER])
        assert sorted(r.prompt for r in rows) == ["older", "oldest"]
        assert sorted(generations.claim_owners(db)) == [OTHER]
    finally:
        db.dispose()


def test_a_request_fal_answered_stops_counting_while_its_images_are_stored(
        migrated_db: str) -> None:
    insert_rows(migrated_db, [claimed_row("PROCESSING", fal_request_id="r")])
    db = Database(migrated_db)
    try:
        stale = datetime.now(UTC) - timedelta(seconds=60)
        assert generations.in_flight(db, stale_before=stale) == 1
        assert not generations.mark_answered(db, 1, owner=OTHER, now=datetime.now(UTC))
        assert generations.mark_answered(db, 1, owner=OWNER, now=datetime.now(UTC))
        assert generations.in_flight(db, stale_before=stale) == 0
    finally:
        db.dispose()


def test_a_finished_row_holds_no_claim(migrated_db: str) -> None:
    insert_rows(migrated_db, [claimed_row("PROCESSING", fal_request_id=f"r{i}")
                              for i in (1, 2, 3)])
    db = Database(migrated_db)
    try:
        assert generations.change_state(db, 1, ["PROCESSING"], status="COMPLETED")
        assert generations.change_claimed(db, 2, expected="PROCESSING", owner=OWNER,
                                          status="FAILED", error="fal: no")
        assert generations.change_state(db, 3, ["PROCESSING"], error="storage: down")
        held = {r.id: r.claimed_by for r in (generations.get(db, i) for i in (1, 2, 3))
                if r is not None}
        assert held == {1: None, 2: None, 3: OWNER}  # an unfinished row keeps its claim
    finally:
        db.dispose()


def test_unattended_rows_are_dead_or_stale_claims_handed_over_or_stuck(
        migrated_db: str) -> None:
    fresh = timedelta(seconds=5)
    insert_rows(migrated_db, [
        bot_row("1", "imagen4", "PROCESSING", prompt="dead owner", fal_request_id="a",
                claimed_by=OTHER, claimed_at=ago(seconds=1), age=fresh),
        bot_row("1", "imagen4", "PROCESSING", prompt="stale claim", fal_request_id="b",
                claimed_by="live:3:c", claimed_at=ago(minutes=5), age=fresh),
        bot_row("1", "imagen4", "PROCESSING", prompt="live claim", fal_request_id="c",
                claimed_by="live:3:c", claimed_at=ago(seconds=1), age=fresh),
        bot_row("1", "imagen4", "PROCESSING", prompt="handed over", fal_request_id="d",
                error="storage: down", age=fresh),
        bot_row("1", "imagen4", "PROCESSING", prompt="followed by its run",
                fal_request_id="e", age=fresh),
        bot_row("1", "imagen4", "PROCESSING", prompt="quiet", fal_request_id="f",
                age=timedelta(minutes=3)),
        bot_row("1", "imagen4", "PENDING", prompt="stuck", error="bot", age=timedelta(hours=1)),
        bot_row("1", "imagen4", "PENDING", prompt="queued", age=timedelta(hours=1)),
        bot_row("1", "imagen4", "PENDING", prompt="unsettled", submit_started_at=ago(seconds=5),
                claimed_by=OTHER, claimed_at=ago(seconds=5), age=fresh),
        bot_row("1", "imagen4", "PENDING", prompt="settled", submit_started_at=ago(minutes=3),
                claimed_by=OTHER, claimed_at=ago(seconds=5), age=fresh),
        bot_row("1", "imagen4", "PENDING", prompt="mine", submit_started_at=ago(minutes=3),
                claimed_by=OWNER, claimed_at=ago(minutes=9), age=fresh),
    ])
    db = Database(migrated_db)
    now = datetime.now(UTC)
    try:
        rows = generations.unattended(
            db, kind="imagen4", owner=OWNER, stale_before=now - timedelta(minutes=1),
            settled_before=now - timedelta(minutes=1),
            stuck_before=now - timedelta(minutes=10), dead=[OTHER])
        assert sorted(r.prompt for r in rows) == [
            "dead owner", "handed over", "quiet", "settled", "stale claim", "stuck"]
    finally:
        db.dispose()


def test_release_hands_over_a_row_fal_may_have(migrated_db: str) -> None:
    insert_rows(migrated_db, [claimed_row("PROCESSING", fal_request_id="r"),
                              claimed_row("PENDING"), claimed_row("PENDING", owner=OTHER)])
    db = Database(migrated_db)
    try:
        assert generations.renew(db, owner=OWNER, ids=[1, 2, 3], now=datetime.now(UTC)) == 2
        assert generations.release_rows(db, owner=OWNER, ids=[1, 2, 3], reason="stopped") == 2
        rows = [generations.get(db, i) for i in (1, 2, 3)]
        assert [(r.claimed_by, r.error) for r in rows if r is not None] == [
            (None, "stopped"), (None, None), (OTHER, None)]  # a queued row stays queued
    finally:
        db.dispose()
