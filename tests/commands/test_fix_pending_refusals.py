"""fix-pending when fal's Platform API will not answer (401/403, or a 404 of the listing route
itself from a wrong FAL_PLATFORM_API_URL): a failure to ask, not a verdict. The row stays as
it was, the plan says "could not ask", exit 1; never failed, deleted or resubmitted for it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import parse_database_url
from imagen4ctl.emulator import FalEmulator
from tests.conftest import CANARY, CliResult, assert_no_secret
from tests.factories import ago, bot_row, insert_rows

Cli = Callable[..., CliResult]
KEY = "emulator-key-0001"
UNKNOWN_ID = "00000000-dead-beef-0000-000000000000"


def rows(db_url: str) -> list[Generation]:
    engine = create_engine(parse_database_url(db_url))
    with Session(engine) as session:
        found = list(session.scalars(select(Generation).order_by(Generation.id)))
    engine.dispose()
    return found


def state(db_url: str) -> list[tuple[Any, ...]]:
    """What a verdict would change: status, request id, error, keys, last change."""
    return [(r.status, r.fal_request_id, r.error, r.result_urls, r.updated_at)
            for r in rows(db_url)]


@pytest.fixture
def env(migrated_db: str, s3_env: dict[str, str], fal_emulator: FalEmulator) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY}


def fix(cli: Cli, env: dict[str, str], *args: str) -> tuple[CliResult, list[dict[str, Any]]]:
    result = cli("fix-pending", *args, "--json", env=env)
    return result, json.loads(result.stdout)["items"]


REFUSALS = [
    pytest.param({"faults": "platform=401"}, "refused to list requests of "
                 "fal-ai/imagen4/preview (401: ", id="401"),
    pytest.param({"faults": "platform=403"}, "refused to list requests of "
                 "fal-ai/imagen4/preview (403: ", id="403"),
    pytest.param({"url": "/v0"}, "has no request listing at ", id="route-404"),
]


def refuse(fal_emulator: FalEmulator, env: dict[str, str], how: dict[str, str]
           ) -> dict[str, str]:
    if "faults" in how:
        fal_emulator.faults = how["faults"]
        return env
    return {**env, "FAL_PLATFORM_API_URL": fal_emulator.base_url + how["url"]}


@pytest.mark.parametrize("args", [("--apply",), ("--apply", "--delete", "--backup", "b.jsonl")])
@pytest.mark.parametrize(("how", "said"), REFUSALS)
def test_a_request_the_queue_forgot_is_left_alone_when_the_platform_api_refuses(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator,
    how: dict[str, str], said: str, args: tuple[str, ...],
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id=UNKNOWN_ID)])
    before = state(migrated_db)
    result, [item] = fix(cli, refuse(fal_emulator, env, how), *args)

    assert result.exit_code == 1
    assert item["action"] == "skip"
    assert item["error"].startswith(f"could not ask: fal's Platform API {said}")
    assert item["error"].endswith("— fal does not know this request (expired?)")
    assert state(migrated_db) == before
    # the queue's 404 was not the end: the Platform API was asked before anything was decided
    asked = [e for e in fal_emulator.log.entries("status") if e.request_id == UNKNOWN_ID]
    assert [e.status for e in asked] == [404]
    last = fal_emulator.log.entries()[-1]
    assert last.path.endswith("/models/requests/by-endpoint") and last.at > asked[0].at
    assert fal_emulator.log.submission_count() == 0


def test_the_human_plan_says_could_not_ask(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id=UNKNOWN_ID)])
    fal_emulator.faults = "platform=403"
    result = cli("fix-pending", "--apply", env=env)
    assert result.exit_code == 1
    assert "could not ask" in result.stdout
    assert "owns" not in result.output


def test_a_queue_404_with_nothing_listed_is_still_a_verdict(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id=UNKNOWN_ID)])
    result, [item] = fix(cli, env, "--apply")
    assert result.exit_code == 0
    assert (item["action"], item["error"]) == ("fail",
                                               "fal does not know this request (expired?)")
    platform = fal_emulator.log.entries("platform")
    assert [e.path for e in platform] == ["/v1/models/requests/by-endpoint"]
    assert rows(migrated_db)[0].status == "FAILED"


@pytest.mark.parametrize(("how", "said"), REFUSALS)
def test_a_lost_submission_is_neither_failed_nor_resubmitted_when_the_platform_api_refuses(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator,
    how: dict[str, str], said: str,
) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PENDING", age=timedelta(hours=1),
                                      submit_started_at=ago(hours=1))])
    before = state(migrated_db)
    result, [item] = fix(cli, refuse(fal_emulator, env, how), "--apply", "--resubmit",
                         "--force")
    assert result.exit_code == 1
    assert item["action"] == "skip"
    assert item["error"].startswith(f"could not ask: fal's Platform API {said}")
    assert item["error"].endswith("— submission state unknown")
    assert state(migrated_db) == before
    assert fal_emulator.log.submission_count() == 0


def test_an_expired_queue_result_is_not_failed_when_the_platform_api_refuses(
    cli: Cli, env: dict[str, str], migrated_db: str, fal_emulator: FalEmulator
) -> None:
    """The plan saw COMPLETED in the queue; at apply the result has expired and the Platform
    API refuses: the row keeps its request id for a later run."""
    done = cli("generate", "expires", "--no-wait", "--user-id", "42", "--json", env=env)
    assert done.exit_code == 0, done.output
    request_id = done.json()["fal_request_id"]  # type: ignore[index]
    deadline = time.monotonic() + 10
    while fal_emulator.state(request_id) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.05)
    fal_emulator.result_ttl = fal_emulator.large_result_ttl = 0.0
    fal_emulator.faults = "platform=403"
    old = ago(hours=1)
    engine = create_engine(parse_database_url(migrated_db))
    with Session(engine) as session:
        for row in session.scalars(select(Generation)):
            row.updated_at = row.created_at = old
        session.commit()
    engine.dispose()
    before = state(migrated_db)

    result, [item] = fix(cli, env, "--apply")
    assert result.exit_code == 1
    assert (item["action"], item["outcome"]) == ("skip", "failed")
    assert item["error"].startswith("could not ask: fal's Platform API refused")
    [row] = rows(migrated_db)
    assert (row.status, row.fal_request_id) == ("PROCESSING", request_id)
    assert state(migrated_db)[0][:4] == before[0][:4]


def test_the_key_never_shows(cli: Cli, env: dict[str, str], migrated_db: str,
                             fal_emulator: FalEmulator) -> None:
    insert_rows(migrated_db, [bot_row("42", "imagen4", "PROCESSING", age=timedelta(hours=1),
                                      fal_request_id=UNKNOWN_ID)])
    fal_emulator.faults = "platform=403"
    for args in (("fix-pending",), ("fix-pending", "--json"), ("fix-pending", "--apply")):
        result = cli(*args, env={**env, "FAL_KEY": CANARY})
        assert result.exit_code == 1
        assert_no_secret(result.output)
