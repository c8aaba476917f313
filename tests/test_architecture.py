"""The structure the code keeps: what each folder of imagen4ctl/ may hold and import.

Checked by reading the source (ast), so a violation is found without running its path.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagen4ctl

PACKAGE = Path(imagen4ctl.__file__).parent

# --------------------------------------------------------------------------- one way into the
# table: SQL and ORM queries live in imagen4ctl/db/ (and the emulator, which has no database)

SQL_HOMES = ("db", "emulator")
_SQL = re.compile(
    r"^\s*SELECT\b|\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b|^\s*PRAGMA\b|\bpg_\w+\(|\bsqlite_master\b|\binformation_schema\b"
)
# Methods only SQLAlchemy's query objects have, whatever they are called on.
_ORM_METHODS = frozenset({"with_for_update", "scalar_subquery", "execution_options",
                          "returning", "yield_per"})
# Methods that run a statement, on the objects that carry a transaction.
_RUNS = {"session": {"execute", "scalars", "scalar", "get", "add", "add_all", "merge",
                     "delete", "query", "expunge"},
         "connection": {"execute", "scalars", "scalar"},
         "reader": {"rows", "value", "stream"},
         "writer": {"rows", "value", "execute"}}
# The ORM's own modules: importing them outside db/ is a second way in.
_ORM_MODULES = ("sqlalchemy", "imagen4ctl.db.models", "imagen4ctl.db.tables")


def modules_outside(root: Path, homes: tuple[str, ...]) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] not in homes:
            yield path


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string literal, an f-string's literal parts joined around a placeholder."""
    inside_fstring = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                      for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "?".join(v.value if isinstance(v, ast.Constant) else " ? "
                                        for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in inside_fstring:
            yield node.lineno, node.value


def sql_text(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for line, text in _strings(tree):
        if _SQL.search(text):
            yield line, f"SQL text {' '.join(text.split())[:60]!r}"


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`, which never run."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(n) for child in node.body for n in ast.walk(child))
    return hidden


def _receiver(node: ast.expr) -> str:
    """The last name of what a method is called on: `self.session` → `session`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def orm_queries(tree: ast.AST) -> Iterator[tuple[int, str]]:
    hidden = _type_checking_only(tree)
    from_orm: set[str] = set()  # names imported from SQLAlchemy, e.g. select, update, text
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names]
            if not any(name == m or name.startswith(m + ".") for name in names
                       for m in _ORM_MODULES):
                continue
            if isinstance(node, ast.ImportFrom) and names[0].startswith("sqlalchemy"):
                from_orm.update(alias.asname or alias.name for alias in node.names)
            if id(node) not in hidden:
                yield node.lineno, f"imports {', '.join(names)}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in from_orm:
            yield node.lineno, f"{func.id}() from sqlalchemy"
        elif isinstance(func, ast.Attribute):
            receiver = _receiver(func.value)
            if func.attr in _ORM_METHODS:
                yield node.lineno, f".{func.attr}()"
            for holder, methods in _RUNS.items():
                if receiver.endswith(holder) and func.attr in methods:
                    yield node.lineno, f"{receiver}.{func.attr}()"


def violations(root: Path, check: str) -> list[str]:
    finder = {"sql": sql_text, "orm": orm_queries}[check]
    found = []
    for path in modules_outside(root, SQL_HOMES):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [f"{path.relative_to(root.parent)}:{line}: {what}"
                  for line, what in sorted(finder(tree))]
    return found


def test_no_sql_text_outside_db() -> None:
    """Every statement on `generations` is in imagen4ctl/db/ (generations.py)."""
    assert violations(PACKAGE, "sql") == []


def test_no_orm_query_outside_db() -> None:
    """Services ask imagen4ctl/db/ in words; only type hints may name SQLAlchemy's Session."""
    assert violations(PACKAGE, "orm") == []


@pytest.mark.parametrize(("source", "flagged"), [
    ('q = "SELECT id FROM generations WHERE user_id = :u"', True),
    ('q = f"SELECT {columns} FROM generations"', True),
    ('q = "SELECT 1"', True),
    ('q = ("UPDATE generations SET status = :s "\n     "WHERE id = :id")', True),
    ('q = "INSERT INTO generations (id) VALUES (1)"', True),
    ('q = "DELETE FROM generations"', True),
    ('"""A conditional UPDATE claims the row; nothing is SELECTed twice."""', False),
    ('message = "select the rows from the list"', False),
])
def test_the_sql_check_knows_sql_from_prose(source: str, flagged: bool) -> None:
    assert bool(list(sql_text(ast.parse(source)))) is flagged


@pytest.mark.parametrize(("source", "flagged"), [
    ("from sqlalchemy import select", True),
    ("def f():\n    from sqlalchemy import update\n    return update(t)", True),
    ("import sqlalchemy.orm", True),
    ("from imagen4ctl.db.models import Generation", True),
    ("with db.session() as session:\n    session.execute(q)", True),
    ("rows = self.session.scalars(q)", True),
    ("target = q.with_for_update(skip_locked=True)", True),
    ("reader.rows(q)", True),
    ("if TYPE_CHECKING:\n    from sqlalchemy.orm import Session", False),
    ("data.update(other)", False),
    ("storage.delete(key)", False),
    ("values = {}.get('x')", False),
    ("generations.claim(db, 1, owner='me')", False),
    ("with db.session() as session:\n    generations.counts_by_status(session)", False),
])
def test_the_orm_check_knows_queries_from_lookalikes(source: str, flagged: bool) -> None:
    assert bool(list(orm_queries(ast.parse(source)))) is flagged
