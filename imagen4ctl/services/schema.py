"""The schema of the generations table, for `db upgrade` and `db current`."""

from __future__ import annotations

from dataclasses import dataclass

from imagen4ctl.db import migrate
from imagen4ctl.db.migrate import SchemaState
from imagen4ctl.db.session import Database


@dataclass(frozen=True)
class Upgraded:
    database: str  # where, as `Database.describe` tells it
    before: str | None
    after: str
    adopted: bool


def upgrade(db: Database) -> Upgraded:
    """Bring the schema to head, adopting a table the bot made with every column we need."""
    result = migrate.upgrade(db)
    return Upgraded(db.describe(), result.before, result.after, result.adopted)


def current(db: Database) -> SchemaState:
    return migrate.schema_state(db)
