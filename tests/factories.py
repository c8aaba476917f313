"""Rows as the bot writes them: only the contract's columns, timestamps set in the past."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, insert, text

from imagen4ctl.db.models import Generation
from imagen4ctl.db.session import parse_database_url


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def bot_row(user_id: str, kind: str, status: str, *, age: timedelta = timedelta(minutes=1),
            prompt: str = "a prompt", **extra: Any) -> dict[str, Any]:
    when = datetime.now(UTC) - age
    row = {"user_id": user_id, "kind": kind, "status": status, "prompt": prompt,
           "aspect_ratio": "1:1", "created_at": when, "updated_at": when}
    row.update(extra)
    return row


def insert_rows(db_url: str, rows: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:  # executemany needs the same columns in every row of a batch
        groups.setdefault(tuple(sorted(row)), []).append(row)
    engine = create_engine(parse_database_url(db_url))
    with engine.begin() as connection:
        for batch in groups.values():
            connection.execute(insert(Generation), batch)
    engine.dispose()


INCIDENT_AGES = [timedelta(minutes=30), timedelta(hours=2), timedelta(hours=6),
                 timedelta(hours=20), timedelta(hours=33, minutes=4, seconds=5)]


def incident_rows(user_id: str = "42") -> list[dict[str, Any]]:
    """The incident's user: 137 completed avatars and 5 imagen4 rows stuck PENDING."""
    rows = [bot_row(user_id, "avatar", "COMPLETED", age=timedelta(days=3),
                    result_urls=[f"avatars/{user_id}/{n}.png"]) for n in range(137)]
    rows += [bot_row(user_id, "imagen4", "PENDING", age=age, prompt=f"stuck {n}")
             for n, age in enumerate(INCIDENT_AGES)]
    return rows


def sql(db_url: str, statement: str, **params: Any) -> list[Any]:
    """Run one statement as an outsider (the bot, an operator): its rows, if any."""
    engine = create_engine(parse_database_url(db_url))
    with engine.begin() as connection:
        result = connection.execute(text(statement), params)
        found = list(result) if result.returns_rows else []
    engine.dispose()
    return found
