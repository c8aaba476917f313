"""The backup of rows fix-pending deletes, and `--restore`, which puts them back.

A row is written (and fsynced) to the JSON-lines file before it is deleted, so that a crash
between the two loses nothing; restoring keeps every column, the id included.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagen4ctl.db import generations
from imagen4ctl.db.generations import COLUMNS, TIMES, GenerationRow
from imagen4ctl.errors import UsageError

if TYPE_CHECKING:
    from imagen4ctl.db.session import Database

_LOCK = threading.Lock()  # one line at a time from the pool's threads


def row_to_json(row: GenerationRow) -> dict[str, Any]:
    """Every column, datetimes as ISO 8601: what `--restore` needs to put the row back."""
    data: dict[str, Any] = {}
    for name in COLUMNS:
        value = getattr(row, name)
        data[name] = value.isoformat() if isinstance(value, datetime) else value
    data["claimed_by"] = data["claimed_at"] = None  # a restored row belongs to no run
    return data


def backup_line(row: GenerationRow) -> str:
    return json.dumps(row_to_json(row), ensure_ascii=False)


def append(path: Path, line: str) -> None:
    """On disk (fsynced) before the caller deletes the row."""
    with _LOCK:
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def restore(database: Database, path: Path) -> tuple[int, list[int]]:
    """Put rows from a `--backup` file back, every column intact; ids that exist are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read backup file {path}: {e}") from e
    rows: list[dict[str, Any]] = []
    columns = set(COLUMNS)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}, line {number}: not a JSON object") from e
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            raise UsageError(f"{path}, line {number}: not a backed-up generation row")
        row = {k: v for k, v in data.items() if k in columns}
        for name in TIMES:
            if isinstance(row.get(name), str):
                row[name] = datetime.fromisoformat(row[name])
        rows.append(row)
    return generations.restore_rows(database, rows)
