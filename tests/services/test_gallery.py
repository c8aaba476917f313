"""The gallery's data on its own: what `collect` reads is bounded by LIMITs, however many rows
a user has."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from imagen4ctl.db.session import parse_database_url
from tests.factories import bot_row, insert_rows


def test_reads_are_bounded(migrated_db: str) -> None:
    from imagen4ctl.services.gallery import PROBLEM_CARDS, collect

    insert_rows(migrated_db, [
        bot_row("42", "imagen4", "COMPLETED", prompt=f"p{n}", age=timedelta(minutes=n),
                result_urls=[f"generations/42/{n}/0.png", f"generations/42/{n}/1.png"])
        for n in range(300)
    ] + [bot_row("42", "imagen4", "FAILED", prompt=f"f{n}") for n in range(PROBLEM_CARDS + 5)])
    engine = create_engine(parse_database_url(migrated_db))
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()).upper())

    with Session(engine) as session:
        rows = collect(session, "42", stuck_after=600, limit=5)
    engine.dispose()
    assert [i.prompt for i in rows.images] == ["p0", "p0", "p1", "p1", "p2"]
    assert rows.completed_rows_shown == 3 and rows.completed_count == 300
    assert len(rows.failed) == PROBLEM_CARDS and rows.failed_count == PROBLEM_CARDS + 5
    listings = [s for s in statements if "COUNT(" not in s]
    assert len(listings) == 2  # the failed rows and the completed rows
    assert all(" LIMIT " in s for s in listings), listings
