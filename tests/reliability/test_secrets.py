"""Secrets: with a canary in every secret variable and in the DATABASE_URL password, no
8-character piece of it appears in any output (human, JSON, --debug, success or failure),
in a backup file, or in an `error` column."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CANARY, CliResult, assert_no_secret
from tests.factories import incident_rows, insert_rows, sql
from tests.plugins.s3 import SeaweedServer

Cli = Callable[..., CliResult]


def run_any(cli: Cli, args: list[str], env: dict[str, str]) -> CliResult:
    """In-process, except --debug, which lets a traceback out: that runs as a real process."""
    if "--debug" not in args:
        return cli(*args, env=env)
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "imagen4ctl", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)
    return CliResult(done.returncode, done.stdout, done.stderr)


S3_SECRET = CANARY + "-s3"


@pytest.fixture
def canary_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("canary-s3"))
    server.secret_key = S3_SECRET  # the server itself accepts the canary as its secret
    server.start()
    server.admin_client().make_bucket("canary")
    yield server
    server.stop(grace=0)


@pytest.fixture
def canary_env(pg_database: str, canary_s3: SeaweedServer, fal_emulator: Any) -> dict[str, str]:
    import uuid

    from imagen4ctl.db.migrate import upgrade
    from imagen4ctl.db.session import Database

    schema = f"canary_{uuid.uuid4().hex[:8]}"
    sql(pg_database, f"CREATE SCHEMA {schema}")
    # trust auth ignores the password, so the canary really travels in a working URL
    url = pg_database.replace("postgresql://postgres@", f"postgresql://postgres:{CANARY}@", 1)
    url = f"{url}?options=-csearch_path%3D{schema}"
    db = Database(url)
    upgrade(db)
    db.dispose()
    insert_rows(url, incident_rows("42"))
    return {"DATABASE_URL": url, "FAL_KEY": CANARY + "-falkey", "FAL_API_KEY": CANARY + "-api",
            "FAL_KEY_ID": "key-id", "FAL_KEY_SECRET": CANARY + "-secret",
            "MINIO_ENDPOINT": canary_s3.endpoint, "MINIO_ACCESS_KEY": canary_s3.access_key,
            "MINIO_SECRET_KEY": S3_SECRET, "MINIO_BUCKET": "canary", "IMAGEN4_USER_ID": "42"}


def commands(work: Path) -> list[list[str]]:
    backup = str(work / "backup.jsonl")
    prompts = work / "prompts.txt"
    prompts.write_text("one\n3:4\ttwo [fault:run=noimages]\n")
    return [
        ["check-config"], ["check-config", "--json"], ["--debug", "check-config", "--json"],
        ["db", "upgrade"], ["db", "current"],
        ["generate", "fine"], ["generate", "fine", "--json"],
        ["generate", "broken [fault:submit=500]"],
        ["--debug", "generate", "broken [fault:file=404]"],
        ["generate", "rejected [fault:submit=401]", "--json"],
        ["generate", "--from-file", str(prompts), "--json"],
        ["seed-gallery"], ["seed-gallery", "--json"],
        ["user-images", "42"], ["user-images", "--json"], ["--debug", "user-images", "42"],
        ["fix-pending"], ["fix-pending", "--json"],
        ["fix-pending", "--apply", "--delete", "--backup", backup, "--json"],
        ["fix-pending", "--restore", backup],
        ["reconcile"], ["reconcile", "--json"],
        ["health"], ["health", "--format", "json"], ["health", "--format", "nagios"],
        ["metrics"], ["models"], ["models", "--json"],
        ["worker", "--once"], ["worker", "--once", "--json-logs"],
        ["--debug", "worker", "--once", "--json-logs"],
    ]


def test_no_output_file_or_column_holds_a_secret(cli: Cli, canary_env: dict[str, str],
                                                 isolated_env: Path) -> None:
    seen = []
    for args in commands(isolated_env):
        result = run_any(cli, args, canary_env)
        assert_no_secret(result.output)
        seen.append((args, result.exit_code))
    assert any(code == 0 for args, code in seen if args[0] == "generate")  # success paths ran
    assert any(code != 0 for args, code in seen if args[0] == "generate")  # failure paths too
    backup = isolated_env / "backup.jsonl"
    assert backup.read_text().strip()
    assert_no_secret(backup.read_text())
    errors = sql(canary_env["DATABASE_URL"], "SELECT error FROM generations "
                 "WHERE error IS NOT NULL")
    assert errors
    assert_no_secret(json.dumps([e for (e,) in errors]))


def test_failures_that_involve_the_secrets_themselves(cli: Cli, canary_env: dict[str, str],
                                                      fal_emulator: Any) -> None:
    fal_emulator.accepted_keys = {"a-different-key"}
    bad_s3 = {**canary_env, "MINIO_SECRET_KEY": CANARY + "-wrong"}
    bad_db = {**canary_env,
              "DATABASE_URL": f"postgresql://bot:{CANARY}@127.0.0.1:1/x"}
    for env in (canary_env, bad_s3, bad_db):
        for args in (["check-config"], ["--debug", "check-config", "--json"],
                     ["generate", "x"], ["--debug", "generate", "x"], ["user-images"],
                     ["fix-pending", "--apply", "--resubmit"], ["worker", "--once"]):
            result = run_any(cli, args, env)
            assert_no_secret(result.output)
