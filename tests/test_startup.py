"""Heavy libraries are imported only by the commands that need them (a behaviour, not a timing);
the command asked for is found before the CLI is built."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from imagen4ctl import cli, startup
from imagen4ctl.db.session import Database
from imagen4ctl.emulator import FalEmulator
from tests.conftest import CANARY

PROBE = """
import sys
from imagen4ctl.cli import main
sys.argv = ["imagen4ctl", *{args!r}]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
print("LOADED=" + ",".join(m for m in {heavy!r} if sys.modules.get(m) is not None),
      file=sys.stderr)
print(f"EXIT={{code}}", file=sys.stderr)
"""
# trio: httpcore imports it whenever it is installed; httpx._main: httpx imports its own CLI
# whenever Click is installed. The CLI refuses both. pydantic: Typer 0.29 imports it for every
# command run (pyproject.toml keeps Typer below that).
HEAVY = ("fal_client", "minio", "sqlalchemy", "httpx", "urllib3", "PIL", "alembic", "trio",
         "httpx._main", "pydantic")


def loaded(*args: str, **env: str) -> set[str]:
    """The heavy modules the command loaded; it must have succeeded."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args), heavy=HEAVY)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    lines = result.stderr.splitlines()
    assert lines[-1] in ("EXIT=0", "EXIT=None"), result.stderr[-2000:]
    line = [x for x in lines if x.startswith("LOADED=")][-1]
    return set(filter(None, line.removeprefix("LOADED=").split(",")))


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["fix-pending", "--help"],
                                  ["user-images", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    assert loaded(*args) == set()


def test_offline_check_config_loads_nothing_heavy(migrated_db: str, tmp_path: Path) -> None:
    """It still checks the SQLite file and its schema, through the driver alone."""
    assert loaded("check-config", "--offline", DATABASE_URL=migrated_db,
                  IMAGES_DIR=str(tmp_path), FAL_KEY=CANARY) == set()


def test_user_images_reads_through_the_driver_alone(migrated_db: str, tmp_path: Path) -> None:
    """The first command an operator runs starts without SQLAlchemy, on both databases."""
    assert loaded("user-images", "--json", DATABASE_URL=migrated_db,
                  IMAGES_DIR=str(tmp_path)) == set()
    assert loaded("user-images", "42", DATABASE_URL=migrated_db,
                  IMAGES_DIR=str(tmp_path)) == set()


def test_generate_writes_its_rows_through_the_driver_alone(migrated_db: str, tmp_path: Path,
                                                          fal_emulator: FalEmulator) -> None:
    """A batch's first submission waits for its rows, not for SQLAlchemy's import."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\n16:9\ta harbour in fog\n")
    env = {"DATABASE_URL": migrated_db, "IMAGES_DIR": str(tmp_path / "images"), "FAL_KEY": CANARY}
    needed = {"fal_client", "httpx", "PIL"}
    assert loaded("generate", "--from-file", str(prompts), "--user-id", "u1", "--json",
                  **env) == needed
    assert loaded("generate", "a quiet street", "--user-id", "u1", "--json", **env) == needed
    with Database(migrated_db).read() as reader:
        assert reader.rows("SELECT status, count(*) FROM generations GROUP BY status") == \
            [("COMPLETED", 3)]


def test_a_fix_pending_dry_run_reads_through_the_driver_alone(migrated_db: str, tmp_path: Path,
                                                             fal_emulator: FalEmulator) -> None:
    """Planning reads the stuck rows and asks fal; only changing rows loads the ORM."""
    from tests.factories import bot_row, insert_rows

    insert_rows(migrated_db, [bot_row("u1", "imagen4", "PENDING", age=timedelta(hours=2)),
                              bot_row("u2", "imagen4", "PROCESSING", age=timedelta(hours=3),
                                      fal_request_id="expired-0000")])
    env = {"DATABASE_URL": migrated_db, "IMAGES_DIR": str(tmp_path / "images"), "FAL_KEY": CANARY}
    assert loaded("fix-pending", "--json", **env) == {"fal_client", "httpx"}
    assert "sqlalchemy" in loaded("fix-pending", "--apply", "--json", **env)
    with Database(migrated_db).read() as reader:
        assert reader.rows("SELECT status FROM generations ORDER BY id") == \
            [("FAILED",), ("FAILED",)]


@pytest.mark.parametrize(("args", "command"), [
    (["generate", "a cat"], "generate"),
    (["--debug", "--env-file", "prod.env", "user-images", "42"], "user-images"),
    (["--env-file=prod.env", "db", "upgrade"], "db"),
    (["fix-pending", "--help"], "fix-pending"),
    (["--help"], None),
    (["--version", "generate"], None),
    (["--show-completion", "bash"], None),
    (["generat"], None),
    (["--env-file", "generate"], None),  # the file's name, and no command
    ([], None),
])
def test_the_command_asked_for_is_found_before_the_cli_is_built(
    args: list[str], command: str | None
) -> None:
    assert startup.invoked_command(args, [*cli.COMMANDS, *cli.GROUPS]) == command
