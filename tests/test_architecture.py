"""The structure the code keeps: what each folder of imagen4ctl/ may hold and import.

Checked by reading the source (ast), so a violation is found without running its path.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
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


# --------------------------------------------------------------------------- imports, read from
# the source: every import statement, wherever it is, resolved to the module it loads

@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the module as far as known: `imagen4ctl.db.session`, or `httpx` for its URL
    type_checking: bool  # under `if TYPE_CHECKING:`, so never run


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports(tree: ast.AST, module: str, *, is_package: bool, known: Collection[str]
            ) -> Iterator[Import]:
    """What `module` imports, at its top and inside functions alike; `from pkg import name`
    is pkg.name when that is a module of `known`, else pkg; relative imports made absolute."""
    hidden = _type_checking_only(tree)
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name, id(node) in hidden)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here[: len(here) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                yield Import(node.lineno, target if target in known else base,
                             id(node) in hidden)


def _owner(target: str, known: Collection[str]) -> str | None:
    """The module of `known` that importing `target` runs: the longest dotted prefix."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports when it runs (TYPE_CHECKING aside)."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = {_owner(i.target, modules) for i in imports(
            tree, name, is_package=path.name == "__init__.py", known=modules)
            if not i.type_checking}
        graph[name] = {e for e in edges if e is not None and e != name}
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import circle as the path that walks it (first module repeated last), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done:
                found = visit(target)
                if found is not None:
                    return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            found = visit(node)
            if found is not None:
                return found
    return None


def test_no_import_circle() -> None:
    """A lazy import inside a function counts: it closes the circle the first time it runs."""
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import circle: " + " → ".join(cycle or [])


@pytest.mark.parametrize(("graph", "cycle"), [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, None),  # a diamond is no circle
    ({"a": {"b"}, "b": set(), "c": {"d"}, "d": {"c"}}, ["c", "d", "c"]),
])
def test_find_cycle_walks_the_circle(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_the_import_graph_sees_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg.sub import b\n",  # lazy, and a submodule by name
        "pkg/sub/__init__.py": "from .b import B\n",  # relative, from a package
        "pkg/sub/b.py": "from typing import TYPE_CHECKING\nfrom ..c import C\n"
                        "if TYPE_CHECKING:\n    from pkg.a import f\nB = 1\n",
        "pkg/c.py": "import pkg.a as a\nC = 1\n",
    })
    assert import_graph(package) == {
        "pkg": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub": {"pkg.sub.b"},
        "pkg.sub.b": {"pkg.c"}, "pkg.c": {"pkg.a"},
    }
    assert find_cycle(import_graph(package)) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]


# Each module, imported first in an interpreter where nothing of the package is loaded yet:
# a circle whose order matters fails here even where the application's own order hides it.
_IMPORT_ALONE = """
import importlib, sys, traceback
package, failed = sys.argv[1], []
for name in sys.argv[2:]:
    for loaded in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-2))
print("\\n".join(failed), end="")
sys.exit(1 if failed else 0)
"""
# `python -m imagen4ctl` runs the CLI; Alembic's env.py runs only inside a migration.
NOT_IMPORTED_ALONE = {"imagen4ctl.__main__", "imagen4ctl.db.migrations.env"}


def import_each_alone(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _IMPORT_ALONE, root.name, *names],
                          cwd=root.parent, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root.parent)})


def test_every_module_imports_alone() -> None:
    names = [name for name in package_modules(PACKAGE) if name not in NOT_IMPORTED_ALONE]
    done = import_each_alone(PACKAGE, names)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_alone_finds_a_circle_that_order_hides(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import B\nA = 1\n",
        "pkg/b.py": "from pkg.a import A\nB = 2\n",
    })
    done = import_each_alone(package, ["pkg.a"])
    assert done.returncode == 1
    assert done.stdout.startswith("pkg.a: ") and "ImportError" in done.stdout


# --------------------------------------------------------------------------- imports point one
# way: cli → commands → services → adapters/db, with the shared modules below them all

_APP = {"cli", "startup", "context", "commands", "output", "demo"}  # the CLI and what it shows
_SHARED = {"settings", "errors", "durations", "keys", "endpoints", "deadline"}
# For each part of imagen4ctl/ (a folder, or a module at its top): the parts it never imports.
NEVER_IMPORTS: dict[str, set[str]] = {
    "services": _APP | {"emulator"},
    "adapters": _APP | {"emulator", "services", "db"},
    "db": _APP | {"emulator", "services", "adapters"},
    "emulator": _APP | {"services", "adapters", "db"},  # a fal of its own, not a client of ours
    **{shared: _APP | {"emulator", "services", "adapters", "db"} for shared in _SHARED},
}
# Below the commands nothing prints or parses a command line: a service never prints.
UI_LIBRARIES = frozenset({"typer", "rich", "click"})


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def upward_imports(tree: ast.AST, module: str, known: Collection[str], *,
                   is_package: bool = False) -> Iterator[str]:
    """Imports against the direction of the layers, TYPE_CHECKING blocks included."""
    never = NEVER_IMPORTS.get(_part(module), set())
    for found in imports(tree, module, is_package=is_package, known=known):
        target = _owner(found.target, known)
        if target is not None and _part(target) in never:
            yield f"{found.line}: imports {target}"
        elif target is None and never and found.target.split(".")[0] in UI_LIBRARIES:
            yield f"{found.line}: imports {found.target}"


def test_imports_point_down() -> None:
    known = package_modules(PACKAGE)
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [f"{name}:{v}" for v in upward_imports(
            tree, name, known, is_package=path.name == "__init__.py")]
    assert found == []


@pytest.mark.parametrize(("module", "source", "flagged"), [
    ("imagen4ctl.services.x", "from imagen4ctl.context import AppContext", True),
    ("imagen4ctl.services.x", "if TYPE_CHECKING:\n    from imagen4ctl.commands import options",
     True),
    ("imagen4ctl.services.x", "from imagen4ctl.output import console", True),
    ("imagen4ctl.services.x", "import typer", True),
    ("imagen4ctl.services.x", "from rich.table import Table", True),
    ("imagen4ctl.adapters.x", "from imagen4ctl.services.images import ImageStore", True),
    ("imagen4ctl.db.x", "def f():\n    from imagen4ctl.adapters.fal import FalAdapter", True),
    ("imagen4ctl.emulator.x", "from imagen4ctl.db import generations", True),
    ("imagen4ctl.settings", "from imagen4ctl.services import doctor", True),
    ("imagen4ctl.services.x", "from imagen4ctl.db import generations", False),
    ("imagen4ctl.services.x", "from imagen4ctl.adapters.fal import FalAdapter", False),
    ("imagen4ctl.adapters.x", "from imagen4ctl.deadline import Deadline", False),
    ("imagen4ctl.emulator.x", "from imagen4ctl.endpoints import ENDPOINTS", False),
    ("imagen4ctl.commands.x", "from imagen4ctl.output import console", False),
    ("imagen4ctl.context", "from imagen4ctl.services.recovery import Recovery", False),
])
def test_the_direction_check_knows_up_from_down(module: str, source: str, flagged: bool) -> None:
    found = list(upward_imports(ast.parse(source), module, package_modules(PACKAGE)))
    assert bool(found) is flagged, found


# --------------------------------------------------------------------------- third-party clients
# live in adapters/ and db/ (and the emulator, which is a fal of its own)

CLIENTS = frozenset({"fal_client", "minio", "httpx", "psycopg2", "sqlite3", "urllib3"})
CLIENT_HOMES = ("adapters", "db", "emulator")
# The demo replays the incident's bot, which called fal_client itself with only FAL_API_KEY
# set: that direct call is what the demo shows failing, so it must not go through our adapter.
CLIENT_EXCEPTIONS = {"demo/naive_bot.py"}


def client_imports(tree: ast.AST, module: str = "imagen4ctl.example") -> Iterator[str]:
    """Third-party clients imported anywhere in the module, TYPE_CHECKING blocks included."""
    for found in imports(tree, module, is_package=False, known=()):
        if found.target.split(".")[0] in CLIENTS:
            yield f"{found.line}: imports {found.target}"


def test_no_client_outside_adapters_and_db() -> None:
    found = []
    for path in modules_outside(PACKAGE, CLIENT_HOMES):
        where = path.relative_to(PACKAGE).as_posix()
        if where in CLIENT_EXCEPTIONS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [f"imagen4ctl/{where}:{line}" for line in client_imports(tree)]
    assert found == []


def test_the_demo_bot_still_calls_fal_client_itself() -> None:
    """The one exception is still needed (else drop it from CLIENT_EXCEPTIONS)."""
    for where in CLIENT_EXCEPTIONS:
        tree = ast.parse((PACKAGE / where).read_text(encoding="utf-8"))
        assert list(client_imports(tree)), where


@pytest.mark.parametrize(("source", "flagged"), [
    ("import httpx", True),
    ("def f():\n    import minio", True),
    ("if TYPE_CHECKING:\n    import httpx", True),
    ("from fal_client.client import AppId", True),
    ("import psycopg2.errors", True),
    ("import sqlite3 as driver", True),
    ("from urllib3.util import Retry", True),
    ("from urllib.parse import urljoin", False),
    ("import httpx_sse", False),
    ("from imagen4ctl.adapters.download import Downloader", False),
    ("from imagen4ctl.db import generations", False),
])
def test_the_client_check_knows_clients(source: str, flagged: bool) -> None:
    assert bool(list(client_imports(ast.parse(source)))) is flagged


# --------------------------------------------------------------------------- size

MAX_LINES = 500
LONG_ALLOWED = {"emulator/server.py"}  # one HTTP server whose routes read best side by side


def test_no_module_is_over_500_lines() -> None:
    long = {path.relative_to(PACKAGE).as_posix(): n for path in sorted(PACKAGE.rglob("*.py"))
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert set(long) <= LONG_ALLOWED, long


# --------------------------------------------------------------------------- commands parse,
# call a service, render: they reach data through services and the AppContext only

COMMANDS = PACKAGE / "commands"
# The commands' own helpers, which any command may import.
COMMAND_HELPERS = {"imagen4ctl.commands._guard", "imagen4ctl.commands._batch",
                   "imagen4ctl.commands.options"}
_NOT_FOR_COMMANDS = ("imagen4ctl.db", "imagen4ctl.adapters", "imagen4ctl.cli")


def command_violations(tree: ast.AST, module: str, known: Collection[str]) -> Iterator[str]:
    """Imports of the database, the adapters, cli.py or another command, however spelled and
    wherever in the module (TYPE_CHECKING blocks too: a type from db/ is a way in)."""
    for found in imports(tree, module, is_package=False, known=known):
        target = _owner(found.target, known) or found.target
        if any(target == home or target.startswith(home + ".") for home in _NOT_FOR_COMMANDS):
            yield f"{found.line}: imports {target}"
        elif target.startswith("imagen4ctl.commands.") and target != module \
                and target not in COMMAND_HELPERS:
            yield f"{found.line}: imports the command {target}"


def test_commands_only_parse_call_and_render() -> None:
    known = package_modules(PACKAGE)
    found = []
    for path in sorted(COMMANDS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found += [f"imagen4ctl/commands/{path.name}:{v}"
                  for v in command_violations(tree, module_name(path, PACKAGE), known)]
    assert found == []


@pytest.mark.parametrize(("source", "flagged"), [
    ("from imagen4ctl.db import migrate", True),
    ("from imagen4ctl import db", True),
    ("def f():\n    from imagen4ctl.adapters.fal import FalAdapter", True),
    ("if TYPE_CHECKING:\n    from imagen4ctl.adapters.storage import Storage", True),
    ("from ..adapters.download import Downloader", True),
    ("import imagen4ctl.db.session", True),
    ("from imagen4ctl.cli import app", True),
    ("from imagen4ctl.commands.generate import generate", True),
    ("from . import reconcile", True),
    ("from .options import TimeoutOption", False),
    ("from imagen4ctl.commands._batch import run_and_report", False),
    ("from imagen4ctl.commands._guard import guarded", False),
    ("from imagen4ctl.context import AppContext", False),
    ("if TYPE_CHECKING:\n    from imagen4ctl.services.gallery import GalleryResult", False),
    ("from imagen4ctl.deadline import Deadline", False),
])
def test_the_command_check_knows_the_ways_in(source: str, flagged: bool) -> None:
    known = package_modules(PACKAGE)
    found = list(command_violations(ast.parse(source), "imagen4ctl.commands.example", known))
    assert bool(found) is flagged, found
