"""`user-images` on SQLite and PostgreSQL: totals that add up, stuck rows, links that open."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from imagen4ctl.db.session import parse_database_url
from tests.conftest import CliResult
from tests.factories import bot_row, incident_rows, insert_rows

Cli = Callable[..., CliResult]


@pytest.fixture
def incident_db(migrated_db: str) -> str:
    rows = incident_rows("42")
    rows += [bot_row("7", "imagen4", "COMPLETED", result_urls=["generations/7/1/0.png"])
             for _ in range(3)]
    rows += [bot_row("7", "imagen4", "FAILED", error="fal: boom")]
    rows += [bot_row("9", "imagen4", "PENDING", age=timedelta(minutes=2))]  # young: not stuck
    rows += [bot_row("9", "avatar", "PROCESSING", age=timedelta(hours=1))]
    insert_rows(migrated_db, rows)
    return migrated_db


def report(cli: Cli, db: str, *args: str) -> dict[str, Any]:
    result = cli("user-images", *args, "--json", env={"DATABASE_URL": db})
    assert result.exit_code == 0, result.output
    data = result.json()
    assert isinstance(data, dict)
    return data


def assert_adds_up(data: dict[str, Any]) -> None:
    kinds = data["by_kind"]
    assert data["total"] == sum(k["total"] for k in kinds.values())
    assert all(k["total"] == sum(k["by_status"].values()) for k in kinds.values())


def test_incident_user_adds_up_and_shows_five_stuck(cli: Cli, incident_db: str) -> None:
    data = report(cli, incident_db, "42")
    assert data["total"] == 142 and data["users"] == 1
    assert data["by_kind"] == {
        "avatar": {"total": 137, "by_status": {"COMPLETED": 137}},
        "imagen4": {"total": 5, "by_status": {"PENDING": 5}},
    }
    assert_adds_up(data)
    assert data["stuck_after_seconds"] == 600
    assert data["stuck_count"] == 5
    assert 119045 <= data["oldest_stuck_seconds"] < 119045 + 60
    ages = [s["age_seconds"] for s in data["stuck"]]
    assert ages == sorted(ages, reverse=True)  # oldest first
    assert {s["status"] for s in data["stuck"]} == {"PENDING"}
    assert data["top_stuck_users"] == [{"user_id": "42", "stuck": 5}]
    assert data["verdict"] == ("5 stuck Imagen4 generations, oldest 33h 4m — run "
                               "`imagen4ctl fix-pending`")


def test_human_output_matches_the_json(cli: Cli, incident_db: str) -> None:
    result = cli("user-images", "42", env={"DATABASE_URL": incident_db})
    assert result.exit_code == 0
    out = result.stdout
    assert "user 42 — 142 generations" in out
    assert "33h 4m" in out
    assert out.rstrip().endswith("5 stuck Imagen4 generations, oldest 33h 4m — run "
                                 "`imagen4ctl fix-pending`")
    for line in out.splitlines():
        if line.strip("│ ").startswith("total"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            assert cells[-1] == "142"


def test_completed_rows_give_a_clean_verdict(cli: Cli, incident_db: str) -> None:
    engine = create_engine(parse_database_url(incident_db))
    with engine.begin() as connection:
        connection.execute(text("UPDATE generations SET status = 'COMPLETED' "
                                "WHERE user_id = '42' AND kind = 'imagen4'"))
    engine.dispose()
    data = report(cli, incident_db, "42")
    assert data["stuck_count"] == 0 and data["stuck"] == []
    assert data["oldest_stuck_seconds"] is None
    assert data["verdict"].startswith("nothing stuck: 142 generations")
    result = cli("user-images", "42", "--fail-on-stuck", env={"DATABASE_URL": incident_db})
    assert result.exit_code == 0


def test_fail_on_stuck_exits_3(cli: Cli, incident_db: str) -> None:
    result = cli("user-images", "42", "--fail-on-stuck", env={"DATABASE_URL": incident_db})
    assert result.exit_code == 3
    assert cli("user-images", "42", env={"DATABASE_URL": incident_db}).exit_code == 0


def test_fleet(cli: Cli, incident_db: str) -> None:
    data = report(cli, incident_db)
    assert data["user_id"] is None
    assert data["users"] == 3
    assert data["total"] == 148
    assert_adds_up(data)
    assert data["stuck_count"] == 6
    assert data["top_stuck_users"] == [{"user_id": "42", "stuck": 5},
                                       {"user_id": "9", "stuck": 1}]
    assert "(1 avatar, 5 imagen4)" in data["verdict"]
    assert report(cli, incident_db, "--kind", "avatar")["stuck_count"] == 1


def test_limit_and_stuck_after(cli: Cli, incident_db: str) -> None:
    data = report(cli, incident_db, "42", "--limit", "2")
    assert data["stuck_count"] == 5 and len(data["stuck"]) == 2
    data = report(cli, incident_db, "42", "--stuck-after", "3h")
    assert data["stuck_count"] == 3 and data["stuck_after_seconds"] == 10800


@pytest.mark.parametrize("bad", ["-5m", "10x", ""])
def test_bad_stuck_after_is_a_usage_error(cli: Cli, incident_db: str, bad: str) -> None:
    result = cli("user-images", "--stuck-after", bad, env={"DATABASE_URL": incident_db})
    assert result.exit_code == 2
    assert "--stuck-after" in result.stderr
    assert "Traceback" not in result.output


def test_unknown_kinds_and_statuses_are_counted(cli: Cli, migrated_db: str) -> None:
    insert_rows(migrated_db, [bot_row("5", "video", "CANCELLED"), bot_row("5", "video", "DONE"),
                              bot_row("5", "imagen4", "COMPLETED")])
    data = report(cli, migrated_db, "5")
    assert data["total"] == 3
    assert data["by_kind"]["video"] == {"total": 2, "by_status": {"CANCELLED": 1, "DONE": 1}}
    assert_adds_up(data)


def test_user_without_rows_is_a_friendly_empty_report(cli: Cli, migrated_db: str) -> None:
    data = report(cli, migrated_db, "nobody")
    assert (data["total"], data["users"], data["by_kind"]) == (0, 0, {})
    assert data["verdict"] == "user nobody has no generations"


def test_recent_images_have_links_that_open(
    cli: Cli, migrated_db: str, s3_bucket: Any, s3_env: dict[str, str]
) -> None:
    payload = b"\x89PNG\r\n\x1a\n not really but bytes"
    s3_bucket.storage.put_bytes("generations/42/1/0.png", payload, content_type="image/png")
    insert_rows(migrated_db, [
        bot_row("42", "imagen4", "COMPLETED", age=timedelta(minutes=5),
                result_urls=["generations/42/1/0.png"], prompt="in the bucket"),
        bot_row("42", "imagen4", "COMPLETED", age=timedelta(minutes=1),
                result_urls=["https://v3.fal.media/files/x.png"], prompt="on fal's cdn"),
    ])
    result = cli("user-images", "42", "--json", env={**s3_env, "DATABASE_URL": migrated_db})
    data = result.json()
    assert isinstance(data, dict)
    newest, older = data["recent"]
    assert newest["urls"] == ["https://v3.fal.media/files/x.png"]
    assert older["keys"] == ["generations/42/1/0.png"]
    assert older["url_expires_seconds"] == 3600
    response = httpx.get(older["urls"][0], timeout=5)
    assert response.status_code == 200 and response.content == payload
    assert len(report(cli, migrated_db, "42", "--recent", "1")["recent"]) == 1


def test_schema_missing_is_one_line(cli: Cli, db_url: str) -> None:
    result = cli("user-images", env={"DATABASE_URL": db_url})
    assert result.exit_code == 1
    assert "error: the generations table is missing" in result.stderr
    assert "hint: Run `imagen4ctl db upgrade`." in result.stderr
