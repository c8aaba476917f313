"""Bad input: a clear message, exit 2 for usage errors, nothing written (DB and bucket)."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagen4ctl.errors import UsageError
from imagen4ctl.keys import object_key
from tests.commands.test_fix_pending import table
from tests.commands.test_generate import KEY
from tests.conftest import CliResult
from tests.factories import incident_rows, insert_rows

Cli = Callable[..., CliResult]
LONG = "x" * 10_000

CASES: list[tuple[list[str], dict[str, str], str]] = [
    # prompts
    (["generate", ""], {}, "the prompt is empty"),
    (["generate", "   \t "], {}, "the prompt is empty"),
    (["generate", LONG], {}, "the limit is 4,000"),
    (["generate", "a\x00b"], {}, "NUL"),
    # no current endpoint takes a negative prompt (fal-js since 2025-12): refused, not ignored
    (["generate", "ok", "--negative-prompt", " "], {}, "does not take --negative-prompt"),
    (["generate", "ok", "--model", "fal-ai/imagen4/preview/fast", "--resolution", "1K"], {},
     "fal-ai/imagen4/preview/fast does not take --resolution"),
    (["generate", "ok", "--model", "fal-ai/imagen4/preview/fsat"], {},
     "--model 'fal-ai/imagen4/preview/fsat' is not an Imagen 4 endpoint"),
    # aspect ratios, counts, options
    (["generate", "x", "--aspect-ratio", "2:1"], {}, "aspect ratio '2:1'"),
    (["generate", "x", "--aspect-ratio", "1:1 "], {}, "aspect ratio '1:1 '"),
    (["generate", "x", "--aspect-ratio", "one"], {}, "aspect ratio 'one'"),
    (["generate", "x", "--num-images", "0"], {}, "1 to 4"),
    (["generate", "x", "--num-images", "5"], {}, "1 to 4"),
    (["generate", "x", "--num-images", "abc"], {}, "--num-images"),
    (["generate", "x", "--seed", "-1"], {}, "seed"),
    (["generate", "x", "--resolution", "4K"], {}, "resolution '4K'"),
    (["generate", "x", "--timeout", "-1"], {}, "--timeout"),
    (["generate", "x", "--timeout", "soon"], {}, "--timeout"),
    (["generate", "--from-file", "no-such-file.txt"], {}, "no-such-file.txt"),
    (["generate", "x", "--concurrency", "0"], {}, "--concurrency"),
    # user ids
    (["generate", "x", "--user-id", "../../etc/passwd"], {}, "invalid user id"),
    (["generate", "x", "--user-id", "a/b"], {}, "invalid user id"),
    (["generate", "x", "--user-id", "u" * 300], {}, "invalid user id"),
    (["generate", "x", "--user-id", ""], {}, "invalid user id"),
    (["generate", "x", "--user-id", "a\x00b"], {}, "invalid user id"),
    (["generate", "x", "--user-id", ".hidden"], {}, "invalid user id"),
    (["generate", "x"], {"IMAGEN4_USER_ID": "../up"}, "invalid user id"),
    (["user-images", "../../etc/passwd"], {}, "invalid user id"),
    (["fix-pending", "--user-id", "a/b"], {}, "invalid user id"),
    (["seed-gallery", "--user-id", "a b"], {}, "invalid user id"),
    (["reconcile", "--user-id", "..", "--json"], {}, "invalid user id"),
    # durations
    (["user-images", "--stuck-after", "-5m"], {}, "--stuck-after"),
    (["user-images", "--stuck-after", "10x"], {}, "--stuck-after"),
    (["fix-pending", "--older-than", "-5m"], {}, "--older-than"),
    (["fix-pending", "--older-than", "10x"], {}, "--older-than"),
    (["user-images"], {"STUCK_AFTER": "-5m"}, "STUCK_AFTER"),
    (["generate", "x"], {"IMAGEN4_TIMEOUT": "10x"}, "IMAGEN4_TIMEOUT"),
    (["generate", "x"], {"IMAGEN4_MAX_IMAGE_BYTES": "lots"}, "IMAGEN4_MAX_IMAGE_BYTES"),
    # fix-pending combinations
    (["fix-pending", "--apply", "--delete"], {}, "--delete needs --backup"),
    (["fix-pending", "--restore", "no-such.jsonl"], {}, "cannot read backup file"),
    # settings
    (["generate", "x"], {"DATABASE_URL": "garbage"}, "DATABASE_URL is not a database URL"),
    (["user-images"], {"DATABASE_URL": "mysql://u@h/db"}, "supports sqlite and postgresql"),
    (["generate", "x"], {"MINIO_ENDPOINT": "http://minio:9000"}, "MINIO_ENDPOINT must be"),
    (["generate", "x"], {"MINIO_ENDPOINT": "minio:9000/bucket"}, "MINIO_ENDPOINT must be"),
    (["generate", "x"], {"MINIO_SECURE": "maybe"}, "MINIO_SECURE"),
    (["generate", "x"], {"IMAGES_PREFIX": "../out/"}, "IMAGES_PREFIX"),
    # unknown commands and options
    (["generat"], {}, "No such command"),
    (["user-images", "--bogus"], {}, "No such option"),
]


@pytest.fixture
def snapshot(migrated_db: str, s3_bucket: Any) -> Callable[[], tuple[Any, ...]]:
    insert_rows(migrated_db, incident_rows("42"))

    def take() -> tuple[Any, ...]:
        objects = sorted(o.key for o in s3_bucket.storage.list(""))
        return (table(migrated_db), objects)

    return take


@pytest.mark.parametrize(("args", "extra", "message"), CASES,
                         ids=[" ".join(a)[:40] or "empty" for a, _, _ in CASES])
def test_bad_input(cli: Cli, migrated_db: str, s3_env: dict[str, str], fal_emulator: Any,
                   snapshot: Callable[[], tuple[Any, ...]], args: list[str],
                   extra: dict[str, str], message: str) -> None:
    env = {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY, "IMAGEN4_USER_ID": "42",
           **extra}
    before = snapshot()
    result = cli(*args, env=env)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert snapshot() == before


@pytest.mark.parametrize("line", ["FAL_KEY='unterminated", "just some words", "KEY WITH SPACES=1"])
def test_malformed_env_file(cli: Cli, isolated_env: Path, line: str) -> None:
    (isolated_env / ".env").write_text(f"OK=1\n{line}\n")
    result = cli("check-config", "--offline")
    assert result.exit_code == 2
    assert "error: env file .env, line 2: cannot parse" in result.stderr


@pytest.mark.parametrize("prompt", ["مرحبا بالعالم — قطة تلعب بالكرة", "🐱⚽️🌅 a cat, a ball",
                                    "\u202eevil override\u202c"])
def test_unusual_but_valid_prompts_work(cli: Cli, migrated_db: str, s3_env: dict[str, str],
                                        fal_emulator: Any, prompt: str) -> None:
    env = {**s3_env, "DATABASE_URL": migrated_db, "FAL_KEY": KEY}
    result = cli("generate", prompt, "--user-id", "7", "--json", env=env)
    assert result.exit_code == 0, result.output
    data = result.json()
    assert isinstance(data, dict) and data["status"] == "COMPLETED"
    assert table(migrated_db)[0][4] == prompt


@settings(max_examples=300, deadline=None)
@given(user_id=st.text(min_size=0, max_size=80), generation_id=st.integers(0, 10**12),
       n=st.integers(0, 3), ext=st.sampled_from(["png", "jpg", "webp", "../png", "p/ng"]))
def test_object_keys_never_escape_their_prefix(user_id: str, generation_id: int, n: int,
                                               ext: str) -> None:
    try:
        key = object_key("generations/", user_id, generation_id, n, ext)
    except UsageError:
        return
    assert key.startswith("generations/")
    assert posixpath.normpath(key) == key
    assert ".." not in key.split("/") and "\\" not in key and "\x00" not in key
    assert key.count("/") == 3
