"""Heavy libraries are imported only by the commands that need them (a behaviour, not a timing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
from imagen4ctl.cli import main
sys.argv = ["imagen4ctl", *{args!r}]
try:
    main()
except SystemExit:
    pass
print("LOADED=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""
HEAVY = ("fal_client", "minio", "sqlalchemy", "httpx", "urllib3", "PIL", "alembic")


def loaded(*args: str, **env: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args), heavy=HEAVY)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    line = [x for x in result.stderr.splitlines() if x.startswith("LOADED=")][-1]
    return set(filter(None, line.removeprefix("LOADED=").split(",")))


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["fix-pending", "--help"],
                                  ["user-images", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    assert loaded(*args) == set()


def test_offline_check_config_loads_nothing_heavy(migrated_db: str, tmp_path: Path) -> None:
    """It still checks the SQLite file and its schema, through the driver alone."""
    assert loaded("check-config", "--offline", DATABASE_URL=migrated_db,
                  IMAGES_DIR=str(tmp_path)) == set()


def test_user_images_reads_through_the_driver_alone(migrated_db: str, tmp_path: Path) -> None:
    """The first command an operator runs starts without SQLAlchemy, on both databases."""
    assert loaded("user-images", "--json", DATABASE_URL=migrated_db,
                  IMAGES_DIR=str(tmp_path)) == set()
    assert loaded("user-images", "42", DATABASE_URL=migrated_db,
                  IMAGES_DIR=str(tmp_path)) == set()
