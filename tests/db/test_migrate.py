"""Migrations on SQLite and PostgreSQL: fresh upgrade, adoption of the bot's own table, and a
table that cannot be adopted."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, inspect, text

from imagen4ctl.db.session import parse_database_url
from tests.conftest import CliResult

Cli = Callable[..., CliResult]

BOT_DDL = {
    "sqlite": """CREATE TABLE generations (
        id INTEGER PRIMARY KEY AUTOINCREMENT, user_id VARCHAR(64) NOT NULL,
        kind VARCHAR(32) NOT NULL, status VARCHAR(16) NOT NULL, prompt TEXT NOT NULL,
        aspect_ratio VARCHAR(8), fal_request_id VARCHAR(64), result_urls JSON, error TEXT,
        created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)""",
    "postgresql": """CREATE TABLE generations (
        id SERIAL PRIMARY KEY, user_id VARCHAR(64) NOT NULL, kind VARCHAR(32) NOT NULL,
        status VARCHAR(16) NOT NULL, prompt TEXT NOT NULL, aspect_ratio VARCHAR(8),
        fal_request_id VARCHAR(64), result_urls JSONB, error TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
}


def execute(db_url: str, *statements: str) -> list[tuple[object, ...]]:
    engine = create_engine(parse_database_url(db_url))
    rows: list[tuple[object, ...]] = []
    with engine.begin() as connection:
        for statement in statements:
            result = connection.execute(text(statement))
            if result.returns_rows:
                rows = [tuple(r) for r in result]
    engine.dispose()
    return rows


def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgresql"


def test_fresh_upgrade_and_current(cli: Cli, db_url: str) -> None:
    env = {"DATABASE_URL": db_url}
    assert cli("db", "current", env=env).stdout.strip() == "none (behind (head is 0003))"
    first = cli("db", "upgrade", env=env)
    assert first.exit_code == 0 and "empty → 0003" in first.stdout
    again = cli("db", "upgrade", env=env)
    assert "is up to date (revision 0003)" in again.stdout
    engine = create_engine(parse_database_url(db_url))
    indexes = {i["name"] for i in inspect(engine).get_indexes("generations")}
    engine.dispose()
    assert {"ix_generations_user_kind_status", "ix_generations_status_updated"} <= indexes


def test_the_bots_table_is_adopted_with_its_rows(cli: Cli, db_url: str) -> None:
    execute(db_url, BOT_DDL[backend(db_url)],
            "INSERT INTO generations (user_id, kind, status, prompt) "
            "VALUES ('42', 'avatar', 'COMPLETED', 'hello')")
    result = cli("db", "upgrade", env={"DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    assert "adopted the existing generations table" in result.stdout
    assert "0001 → 0003" in result.stdout
    assert execute(db_url, "SELECT user_id, kind, status, prompt, fal_endpoint, claimed_by "
                   "FROM generations") == [("42", "avatar", "COMPLETED", "hello", None, None)]
    # a row inserted with only the bot's columns is still valid after the upgrade
    execute(db_url, "INSERT INTO generations (user_id, kind, status, prompt) "
            "VALUES ('43', 'imagen4', 'PENDING', 'p')")
    report = cli("user-images", "--json", env={"DATABASE_URL": db_url}).json()
    assert isinstance(report, dict) and report["total"] == 2


def test_a_table_missing_contract_columns_is_refused(cli: Cli, db_url: str) -> None:
    execute(db_url, "CREATE TABLE generations (id INTEGER PRIMARY KEY, user_id VARCHAR(64))")
    result = cli("db", "upgrade", env={"DATABASE_URL": db_url})
    assert result.exit_code == 1
    assert "lacks columns: kind, status, prompt" in result.stderr
    assert "README.md#the-generations-table" in result.stderr


@pytest.mark.parametrize("url", ["sqlite:///no/such/dir/x.db"])
def test_upgrade_into_a_missing_folder(cli: Cli, url: str) -> None:
    result = cli("db", "upgrade", env={"DATABASE_URL": url})
    assert result.exit_code == 1
    assert "cannot open SQLite file" in result.stderr


def test_the_quick_revision_check_knows_the_newest_migration() -> None:
    from imagen4ctl.db.migrate import HEAD_REVISION, head_revision

    assert HEAD_REVISION == head_revision()
