"""The README is part of the product: its examples come from a real demo run and must not
drift, and every section an error hint names must exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl import errors
from imagen4ctl.demo.transcript import normalize, readme_blocks, steps

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


ANCHORS = {slug(line.lstrip("#")) for line in README.splitlines() if line.startswith("#")}


def test_setup_commands_come_first_then_the_demo() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    assert blocks[0].splitlines() == ["pip install -e '.[dev]'", "python -m pytest -n 2"]
    assert blocks[1].strip() == "imagen4ctl demo"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pytest -n 2" in ci  # CI runs the README's test command


def error_classes() -> list[type[errors.Imagen4ctlError]]:
    found, todo = [], [errors.Imagen4ctlError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_every_error_names_an_existing_readme_section(cls: type[errors.Imagen4ctlError]) -> None:
    assert cls.readme in ANCHORS, f"{cls.__name__}.readme = {cls.readme!r}"


def test_every_readme_link_in_the_code_exists() -> None:
    links = set()
    for path in (ROOT / "imagen4ctl").rglob("*.py"):
        links |= set(re.findall(r"README\.md#([\w-]+)", path.read_text()))
    assert links, "the code links README sections"
    assert links <= ANCHORS, links - ANCHORS


def test_readme_examples_come_from_the_demo() -> None:
    done = subprocess.run([sys.executable, "-m", "imagen4ctl", "demo"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "110"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "every exit code and number as expected" in done.stdout
    recorded = steps(done.stdout)
    blocks = readme_blocks(README)
    assert set(blocks) == {3, 4, 5, 7, 9, 12}
    for number, block in blocks.items():
        assert normalize(block) == normalize(recorded[number]), (
            f"README's demo step {number} drifted: re-record with "
            "`python -m imagen4ctl.demo.transcript README.md`")


def readme_sql(dialect: str) -> str:
    """The bot's INSERT for `dialect` from "The bot's side: insert a PENDING row"."""
    section = README[README.index("### The bot's side"):README.index("### How many replicas")]
    postgresql, sqlite = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    return {"postgresql": postgresql, "sqlite": sqlite}[dialect]


def test_the_bots_insert_in_the_readme_makes_a_row_the_worker_completes(
        migrated_db: str, fal_emulator: object, cli: Any) -> None:
    from sqlalchemy import create_engine

    from imagen4ctl.db.session import parse_database_url

    engine = create_engine(parse_database_url(migrated_db))
    with engine.begin() as connection:
        [(row_id,)] = connection.exec_driver_sql(readme_sql(engine.dialect.name)).fetchall()
    result = cli("worker", "--once", env={"DATABASE_URL": migrated_db, "FAL_KEY": "k"})
    assert result.exit_code == 0, result.output
    with engine.begin() as connection:
        [(status, urls)] = connection.exec_driver_sql(
            f"SELECT status, result_urls FROM generations WHERE id = {int(row_id)}").fetchall()
    engine.dispose()
    assert status == "COMPLETED" and urls, result.output
    assert f"row {row_id} user 42" in result.output
