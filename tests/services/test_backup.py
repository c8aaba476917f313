"""The backup of deleted rows and `--restore`: every column back, ids that exist skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from imagen4ctl.db import generations
from imagen4ctl.db.session import Database
from imagen4ctl.errors import UsageError
from imagen4ctl.services import backup
from tests.commands.test_fix_pending import table
from tests.factories import bot_row, insert_rows, sql


def test_rows_written_then_restored_come_back_whole(migrated_db: str, tmp_path: Path) -> None:
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", prompt=f"p{n}",
                                      params={"seed": n}) for n in range(3)])
    before = table(migrated_db)
    database, path = Database(migrated_db), tmp_path / "rows.jsonl"
    try:
        for row_id in (1, 2, 3):
            row = generations.get(database, row_id)
            assert row is not None
            backup.append(path, backup.backup_line(row))
        sql(migrated_db, "DELETE FROM generations")
        assert backup.restore(database, path) == (3, [])
        assert table(migrated_db) == before
        assert backup.restore(database, path) == (0, [1, 2, 3])
    finally:
        database.dispose()


def test_a_backed_up_row_belongs_to_no_run(migrated_db: str) -> None:
    insert_rows(migrated_db, [bot_row("7", "imagen4", "PENDING", claimed_by="host:1:ab")])
    database = Database(migrated_db)
    try:
        row = generations.get(database, 1)
        assert row is not None
        data = json.loads(backup.backup_line(row))
    finally:
        database.dispose()
    assert data["claimed_by"] is None and data["claimed_at"] is None
    assert data["user_id"] == "7" and isinstance(data["created_at"], str)


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read backup file"),
    ('{"id": 1}\nnot json\n', "line 2: not a JSON object"),
    ('["a list"]\n', "line 1: not a backed-up generation row"),
])
def test_a_bad_backup_file_is_a_usage_error(tmp_path: Path, content: str | None,
                                            message: str) -> None:
    path = tmp_path / "rows.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        backup.restore(cast(Any, None), path)  # refused before the database is asked
