"""Alembic, run programmatically: upgrade, current revision, and adoption of the bot's table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imagen4ctl.db.driver import SCHEMA_HINT, table_missing, translate_errors
from imagen4ctl.db.session import Database
from imagen4ctl.db.values import REQUIRED_COLUMNS
from imagen4ctl.errors import SchemaError

if TYPE_CHECKING:
    from sqlalchemy import Connection

_SCRIPTS = Path(__file__).parent / "migrations"
BASE_REVISION = "0001"  # the bot's own table: what an adopted table is stamped as
HEAD_REVISION = "0003"  # the newest script in migrations/versions; a test keeps them equal


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str
    table_exists: bool
    missing_columns: tuple[str, ...] = ()

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def adoptable(self) -> bool:
        """The bot created `generations` without Alembic, with every required column."""
        return self.table_exists and self.current is None and not self.missing_columns


def _config(connection: Connection | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def schema_state(db: Database) -> SchemaState:
    """Where the schema stands, read with plain queries through the driver: every command
    that touches the database asks, so this loads neither Alembic nor SQLAlchemy."""
    path = db.sqlite_path
    if path is not None and not path.exists():
        return SchemaState(None, HEAD_REVISION, table_exists=False)
    with db.read() as reader:
        if db.is_sqlite:
            tables = {name for name, in reader.rows(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN "
                "('generations', 'alembic_version')")}
            columns = {row[1] for row in reader.rows("PRAGMA table_info(generations)")}
        else:  # the schema the connection's search_path finds first, as the engine's
            tables = {name for name, in reader.rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "current_schema() AND table_name IN ('generations', 'alembic_version')")}
            columns = {name for name, in reader.rows(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = 'generations'")}
        current = reader.value("SELECT version_num FROM alembic_version") \
            if "alembic_version" in tables else None
    exists = "generations" in tables
    missing = tuple(c for c in REQUIRED_COLUMNS if c not in columns) if exists else ()
    return SchemaState(current, HEAD_REVISION, exists, missing)


@dataclass(frozen=True)
class UpgradeResult:
    before: str | None
    after: str
    adopted: bool


def upgrade(db: Database) -> UpgradeResult:
    """Bring the schema to head; a table the bot made without Alembic is checked and stamped."""
    from alembic import command

    state = schema_state(db)
    if state.table_exists and state.current is None and state.missing_columns:
        raise SchemaError(
            "a generations table exists without imagen4ctl's migrations and lacks columns: "
            + ", ".join(state.missing_columns),
            hint="Compare it with the contract in README.md#the-generations-table.",
        )
    with translate_errors(db), db.engine.begin() as connection:
        config = _config(connection)
        if state.adoptable:
            command.stamp(config, BASE_REVISION)
        command.upgrade(config, "head")
    before = BASE_REVISION if state.adoptable else state.current
    return UpgradeResult(before, HEAD_REVISION, state.adoptable)


def require_current(db: Database) -> None:
    """Refuse to work on a schema that is missing or behind, with the command that fixes it."""
    state = schema_state(db)
    if not state.table_exists:
        raise table_missing(db)
    if not state.up_to_date:
        raise SchemaError(
            f"the schema of {db.describe()} is at {state.current or 'no revision'}, "
            f"imagen4ctl needs {state.head}",
            hint=SCHEMA_HINT,
        )
