"""`reconcile`: rows and bucket objects agree; --fix repairs what it can."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.commands.test_fix_pending import processing_row
from tests.commands.test_generate import KEY, rows
from tests.conftest import CliResult
from tests.factories import bot_row, insert_rows, sql

Cli = Callable[..., CliResult]

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def env_for(migrated_db: str, s3_env: dict[str, str]) -> dict[str, str]:
    return {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY}


def check(cli: Cli, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("reconcile", *args, "--json", env=env)
    return result.exit_code, json.loads(result.stdout)


def test_agreement_is_exit_0(cli: Cli, migrated_db: str, s3_env: dict[str, str],
                             s3_bucket: Any, fal_emulator: Any) -> None:
    env = env_for(migrated_db, s3_env)
    assert cli("generate", "fine", "--user-id", "1", env=env).exit_code == 0
    s3_bucket.storage.put_bytes("avatars/1/x.png", PNG, content_type="image/png")  # the bot's
    code, data = check(cli, env)
    assert code == 0 and data["ok"] is True
    assert (data["rows_checked"], data["objects_checked"]) == (1, 1)
    assert data["problems"] == {"missing_object": 0, "empty_result": 0, "fal_url": 0,
                                "orphan_object": 0}


def test_problems_found_and_fixed(cli: Cli, migrated_db: str, s3_env: dict[str, str],
                                  s3_bucket: Any, fal_emulator: Any) -> None:
    env = env_for(migrated_db, s3_env)
    # a completed request whose object later vanished: fal still has it
    row_id = processing_row(cli, env, "vanished")
    time.sleep(0.6)
    assert cli("fix-pending", "--apply", "--older-than", "0", env=env).exit_code == 0
    [row] = rows(migrated_db)
    s3_bucket.storage.delete(row.result_urls[0])
    # a row still pointing at fal's CDN (here: the emulator's file URL)
    other = processing_row(cli, env, "on the cdn")
    time.sleep(0.6)
    cdn_url = next(e.path for e in fal_emulator.log.entries("file"))  # any served file path
    url = f"https://{fal_emulator.host}:{fal_emulator.port}{cdn_url}"
    sql(migrated_db, "UPDATE generations SET status = 'COMPLETED', result_urls = :u "
        "WHERE id = :id", u=json.dumps([url]), id=other)
    # a completed row with nothing at all, from the bot
    insert_rows(migrated_db, [bot_row("5", "imagen4", "COMPLETED", result_urls=[])])
    # an orphan object, old enough to go (aged by writing it, then checking with a fake clock
    # is not possible against S3: use one young orphan that must be left alone)
    s3_bucket.storage.put_bytes("generations/5/999/0.png", PNG, content_type="image/png")
    code, data = check(cli, env)
    assert code == 1 and data["ok"] is False
    assert data["problems"] == {"missing_object": 1, "empty_result": 1, "fal_url": 1,
                                "orphan_object": 1}
    code, data = check(cli, env, "--fix")
    by_type = {p["type"]: p for p in data["items"]}
    assert by_type["missing_object"]["action"] == "refetched"
    assert by_type["fal_url"]["action"] == "copied"
    assert by_type["empty_result"]["action"] == "failed"
    assert by_type["orphan_object"]["action"] == "left"  # younger than an hour
    assert code == 1  # the young orphan remains
    refetched = next(r for r in rows(migrated_db) if r.id == row_id)
    assert s3_bucket.storage.stat(refetched.result_urls[0]) is not None
    copied = next(r for r in rows(migrated_db) if r.id == other)
    assert copied.result_urls[0].startswith("generations/42/")
    s3_bucket.storage.delete("generations/5/999/0.png")
    code, data = check(cli, env)
    assert code == 0, data


def test_old_orphans_are_deleted_only_under_our_prefix(cli: Cli, migrated_db: str,
                                                        isolated_env: Any) -> None:
    import os

    env = {"DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGES_DIR": "pics"}
    pics = isolated_env / "pics"
    for key in ("generations/5/999/0.png", "avatars/5/0.png"):
        path = pics / key
        path.parent.mkdir(parents=True)
        path.write_bytes(PNG)
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    code, data = check(cli, env, "--fix")
    assert [(p["type"], p["key"], p["action"]) for p in data["items"]] == [
        ("orphan_object", "generations/5/999/0.png", "deleted")]
    assert code == 0
    assert not (pics / "generations/5/999/0.png").exists()
    assert (pics / "avatars/5/0.png").exists()


def test_fix_without_a_fal_key_says_so_and_touches_nothing(cli: Cli, migrated_db: str,
                                                           isolated_env: Any) -> None:
    orphan = isolated_env / "pics" / "generations/5/999/0.png"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(PNG)
    env = {"DATABASE_URL": migrated_db, "IMAGES_DIR": "pics"}
    result = cli("reconcile", "--fix", env=env)
    assert result.exit_code == 1
    assert ("error: no fal key: FAL_KEY is not set (--fix needs it to fetch images again)"
            in result.stderr)
    assert "hint: Set FAL_KEY (or FAL_API_KEY)" in result.stderr
    assert orphan.exists()
