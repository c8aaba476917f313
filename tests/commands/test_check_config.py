"""`check-config` verdicts for the situations an operator meets, against real servers. Its
`fal_api` probe reads the account's balance from fal's Platform API: free, and honest about
what it cannot see (a lock with money on the account, a key without billing permission)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagen4ctl.emulator import FalEmulator
from tests.conftest import CANARY, CliResult, assert_no_secret

Cli = Callable[..., CliResult]
KEY = "emulator-key-0001"


def checks(result: CliResult) -> dict[str, dict[str, Any]]:
    data = result.json()
    assert isinstance(data, dict)
    assert set(data) == {"ok", "checks", "settings"}
    return {c["name"]: c for c in data["checks"]}


def test_nothing_set(cli: Cli) -> None:
    result = cli("check-config", "--offline")
    assert result.exit_code == 1
    assert "✗ fal_credentials: no fal key: FAL_KEY is not set" in result.stdout
    assert "hint: Set FAL_KEY (or FAL_API_KEY)" in result.stdout
    assert "! storage: images go to the local folder" in result.stdout
    assert "! database: no database file yet" in result.stdout
    assert "Traceback" not in result.output
    data = cli("check-config", "--offline", "--json")
    by_name = checks(data)
    assert [c["name"] for c in data.json()["checks"]] == [  # type: ignore[index]
        "fal_credentials", "fal_api", "database", "schema", "storage"]
    assert by_name["fal_credentials"]["status"] == "fail"
    assert by_name["fal_api"]["status"] == "skip"
    assert by_name["schema"]["status"] == "skip"
    assert by_name["storage"]["status"] == "warn"
    assert data.json()["ok"] is False  # type: ignore[index]
    assert not Path("imagen4ctl.db").exists()  # the doctor creates nothing


def test_only_fal_api_key_is_the_incident(cli: Cli, fal_emulator: object) -> None:
    result = cli("check-config", "--json", env={"FAL_API_KEY": "key-only-in-fal-api-key"})
    by_name = checks(result)
    credentials = by_name["fal_credentials"]
    assert credentials["status"] == "warn"
    assert "only FAL_API_KEY is set" in credentials["message"]
    assert "root cause" in credentials["message"]
    assert by_name["fal_api"]["status"] == "ok"
    assert "FAL_API_KEY" in by_name["fal_api"]["message"]
    assert result.exit_code == 0


def test_both_keys_equal_is_ok(cli: Cli) -> None:
    result = cli("check-config", "--offline", "--json",
                 env={"FAL_KEY": "same-key-123", "FAL_API_KEY": "same-key-123"})
    assert checks(result)["fal_credentials"]["status"] == "ok"


def test_both_keys_different_is_a_named_conflict(cli: Cli) -> None:
    result = cli("check-config", "--offline", env={"FAL_KEY": "key-aaaa", "FAL_API_KEY": "key-b"})
    assert result.exit_code == 0
    assert "! fal_credentials: FAL_KEY and FAL_API_KEY are both set and differ: using FAL_KEY" \
        in result.stdout


def test_env_file_against_environment(cli: Cli, isolated_env: Path) -> None:
    env_file = isolated_env / "staging.env"
    env_file.write_text("FAL_KEY=from-the-file-1\nMINIO_BUCKET=file-bucket\n")
    result = cli("--env-file", str(env_file), "check-config", "--offline", "--json",
                 env={"MINIO_BUCKET": "env-bucket"})
    settings = result.json()["settings"]  # type: ignore[index]
    assert settings["MINIO_BUCKET"] == {"value": "env-bucket", "source": "env"}
    assert settings["FAL_KEY"]["source"] == f".env ({env_file})"
    assert settings["FAL_KEY"]["value"].startswith("set (15 chars, sha256 ")
    assert settings["STUCK_AFTER"] == {"value": "10m", "source": "default"}


def test_near_miss_names_are_flagged(cli: Cli) -> None:
    result = cli("check-config", "--offline", "--json", env={"FAL_API_TOKEN": "x"})
    by_name = checks(result)
    assert "did you mean FAL_KEY?" in by_name["fal_credentials"]["message"]
    assert by_name["variable_names"]["status"] == "warn"


@pytest.mark.parametrize("url", ["not a url", "mysql://u:pw-canary-Zq8Xv2Lp9Wm4@h/db",
                                 "postgresql://bot:canary-Zq8Xv2Lp9Wm4Rt7Yk3Hs6Jd1@127.0.0.1:1/x"])
def test_bad_database_url_fails_in_one_line(cli: Cli, url: str) -> None:
    result = cli("check-config", "--json", "--timeout", "2", env={"DATABASE_URL": url})
    database = checks(result)["database"]
    assert database["status"] == "fail"
    assert "\n" not in database["message"]
    assert checks(result)["schema"]["status"] == "skip"
    assert result.exit_code == 1
    assert_no_secret(result.output, "canary-Zq8Xv2Lp9Wm4")


def test_sqlite_folder_missing_fails(cli: Cli) -> None:
    result = cli("check-config", "--offline", "--json",
                 env={"DATABASE_URL": "sqlite:///no/such/folder/x.db"})
    assert checks(result)["database"]["status"] == "fail"


def test_schema_missing_then_upgraded(cli: Cli, db_url: str) -> None:
    from sqlalchemy import create_engine, text

    from imagen4ctl.db.session import parse_database_url

    engine = create_engine(parse_database_url(db_url))
    with engine.begin() as connection:  # an empty but existing database
        connection.execute(text("CREATE TABLE unrelated (x integer)"))
    engine.dispose()
    env = {"DATABASE_URL": db_url, "FAL_KEY": "k-123456"}
    before = checks(cli("check-config", "--json", env=env))
    assert before["database"]["status"] == "ok"
    assert before["schema"]["status"] == "fail"
    assert before["schema"]["hint"] == "Run `imagen4ctl db upgrade`."
    upgraded = cli("db", "upgrade", env=env)
    assert upgraded.exit_code == 0, upgraded.output
    assert "→ 0003" in upgraded.stdout
    after = checks(cli("check-config", "--json", env=env))
    assert after["schema"] == {"name": "schema", "status": "ok",
                               "message": "revision 0003 (head)", "hint": None}
    assert cli("db", "current", env=env).stdout.strip() == "0003 (up to date)"


def test_s3_good(cli: Cli, s3_env: dict[str, str]) -> None:
    result = cli("check-config", "--json", "--offline", env=s3_env)
    assert checks(result)["storage"]["status"] == "skip"  # --offline opens no connection
    result = cli("check-config", "--json", env={**s3_env, "FAL_KEY": "k-123456"})
    storage = checks(result)["storage"]
    assert storage["status"] == "ok", storage
    assert "probe" in storage["message"]


def test_s3_wrong_secret(cli: Cli, s3_env: dict[str, str]) -> None:
    env = {**s3_env, "MINIO_SECRET_KEY": CANARY}
    result = cli("check-config", "--json", env=env)
    storage = checks(result)["storage"]
    assert storage["status"] == "fail"
    assert "MINIO_SECRET_KEY" in (storage["hint"] or "")
    assert result.exit_code == 1
    assert_no_secret(result.output)


def test_s3_bucket_missing(cli: Cli, s3_env: dict[str, str]) -> None:
    result = cli("check-config", "--json", env={**s3_env, "MINIO_BUCKET": "no-such-bucket-x"})
    storage = checks(result)["storage"]
    assert storage["status"] == "fail"
    assert "no-such-bucket-x" in storage["message"]


def test_s3_server_stopped(cli: Cli, s3_server_private: Any) -> None:
    env = {"MINIO_ENDPOINT": s3_server_private.endpoint,
           "MINIO_ACCESS_KEY": s3_server_private.access_key,
           "MINIO_SECRET_KEY": s3_server_private.secret_key}
    s3_server_private.stop(grace=0)
    import time

    started = time.monotonic()
    result = cli("check-config", "--json", "--timeout", "2", env=env)
    assert time.monotonic() - started < 15
    storage = checks(result)["storage"]
    assert storage["status"] == "fail"
    assert s3_server_private.endpoint in storage["message"]


def test_local_folder_is_a_warning(cli: Cli, isolated_env: Path) -> None:
    (isolated_env / "pics").mkdir()
    result = cli("check-config", "--offline", "--json", env={"IMAGES_DIR": "pics",
                                                              "FAL_KEY": "k-123456"})
    storage = checks(result)["storage"]
    assert storage["status"] == "warn"
    assert str(isolated_env / "pics") in storage["message"]
    assert result.exit_code == 0
    (isolated_env / "afile").write_text("x")
    result = cli("check-config", "--offline", "--json", env={"IMAGES_DIR": "afile"})
    assert checks(result)["storage"]["status"] == "fail"


def test_fal_key_rejected_by_fal(cli: Cli, fal_emulator: Any) -> None:
    fal_emulator.accepted_keys = {"the-good-key"}
    result = cli("check-config", "--json", env={"FAL_API_KEY": "a-bad-key-123"})
    fal_api = checks(result)["fal_api"]
    assert fal_api["status"] == "fail"
    assert "rejected the key from FAL_API_KEY" in fal_api["message"]


def test_fal_unreachable_fails_within_timeout(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import imagen4ctl.adapters.fal as fal_adapter

    monkeypatch.setattr(fal_adapter, "queue_host", lambda: "127.0.0.1:9")  # nothing listens
    started = time.monotonic()
    result = cli("check-config", "--json", "--timeout", "1", env={"FAL_KEY": "k-123456"})
    assert time.monotonic() - started < 10
    fal_api = checks(result)["fal_api"]
    assert fal_api["status"] == "fail"
    assert "cannot reach fal at 127.0.0.1:9" in fal_api["message"]


def test_canary_secrets_never_shown(cli: Cli, s3_env: dict[str, str], fal_emulator: Any) -> None:
    env = {**s3_env, "FAL_KEY": CANARY + "1", "FAL_API_KEY": CANARY + "2",
           "FAL_KEY_ID": "id", "FAL_KEY_SECRET": CANARY + "3", "MINIO_SECRET_KEY": CANARY,
           "DATABASE_URL": f"postgresql://bot:{CANARY}@127.0.0.1:1/db"}
    for args in (["check-config"], ["check-config", "--json"], ["check-config", "--offline"],
                 ["--debug", "check-config", "--json"]):
        result = cli(*args, env=env)
        assert_no_secret(result.output)
        assert "Traceback" not in result.output
        assert result.exit_code == (0 if "--offline" in args else 1)  # PostgreSQL unreachable


@pytest.mark.parametrize("command", [[], ["check-config"], ["db"], ["db", "upgrade"],
                                     ["db", "current"], ["generate"], ["seed-gallery"],
                                     ["emulator"], ["user-images"], ["fix-pending"],
                                     ["reconcile"], ["health"], ["metrics"], ["gallery"],
                                     ["demo"]])
def test_every_command_answers_help(cli: Cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout
    if command and command != ["db"]:
        assert "Example" in result.stdout


# --- fal_api: the account's state ---


def fal_api(cli: Cli, key: str = KEY) -> dict[str, Any]:
    result = cli("check-config", "--json", env={"FAL_KEY": key})
    data = result.json()
    assert isinstance(data, dict)
    [check] = [c for c in data["checks"] if c["name"] == "fal_api"]
    return check


@pytest.mark.parametrize(("balance", "shown"), [(0.0, "0"), (-0.18, "-0.18")])
def test_no_balance_is_a_warning_that_submissions_will_be_refused(
    cli: Cli, fal_emulator: FalEmulator, balance: float, shown: str
) -> None:
    fal_emulator.balance = balance
    check = fal_api(cli)
    assert check["status"] == "warn"
    assert check["message"] == (
        f"{fal_emulator.host}:{fal_emulator.port} accepted the key from FAL_KEY, but the fal "
        f"account balance is {shown} USD: submissions will be refused (account locked)")
    assert "fal.ai/dashboard/billing" in check["hint"]
    assert fal_emulator.log.submission_count() == 0  # no paid call, ever


def test_a_positive_balance_is_ok_and_says_a_lock_is_not_visible(
    cli: Cli, fal_emulator: FalEmulator
) -> None:
    fal_emulator.balance = 12.5
    fal_emulator.locked_keys = {KEY}  # locked with money on the account (fal-ai/fal #1147)
    check = fal_api(cli)
    assert check["status"] == "ok"
    assert check["message"].endswith("; balance 12.5 USD (a lock is not visible to this probe)")
    assert fal_emulator.log.submission_count() == 0


@pytest.mark.parametrize(("fault", "code"), [(None, 403), ("platform=401", 401)])
def test_a_key_without_billing_permission_says_what_it_could_not_check(
    cli: Cli, fal_emulator: FalEmulator, fault: str | None, code: int
) -> None:
    if fault is None:
        fal_emulator.billing_refused = True
    else:
        fal_emulator.faults = fault
    check = fal_api(cli)
    assert check["status"] == "ok"  # the key itself was accepted by fal's queue
    assert (f"; could not check the account's state: the key has no billing permission "
            f"({code}: ") in check["message"]


def test_a_wrong_platform_url_says_what_it_could_not_check(
    cli: Cli, fal_emulator: FalEmulator
) -> None:
    result = cli("check-config", "--json",
                 env={"FAL_KEY": KEY, "FAL_PLATFORM_API_URL": f"{fal_emulator.base_url}/v0"})
    [check] = [c for c in result.json()["checks"] if c["name"] == "fal_api"]  # type: ignore[index]
    assert check["status"] == "ok"
    assert "could not check the account's state: fal's Platform API answered 404" in \
        check["message"]


def test_the_human_output_shows_the_warning_and_its_hint(
    cli: Cli, fal_emulator: FalEmulator
) -> None:
    fal_emulator.balance = 0
    result = cli("check-config", env={"FAL_KEY": KEY})
    assert "! fal_api:" in result.stdout
    assert "submissions will be refused (account locked)" in result.stdout
    assert "hint: Top up at https://fal.ai/dashboard/billing" in result.stdout


def test_the_key_never_shows(cli: Cli, fal_emulator: FalEmulator) -> None:
    for knobs in ({"balance": -1.0}, {"billing_refused": True}):
        for name, value in knobs.items():
            setattr(fal_emulator, name, value)
        for args in (("check-config",), ("check-config", "--json")):
            result = cli(*args, env={"FAL_KEY": CANARY})
            assert_no_secret(result.output)


def test_the_webhook_keys_are_probed_only_when_set(cli: Cli, fal_emulator: FalEmulator) -> None:
    jwks = fal_emulator.base_url + "/.well-known/jwks.json"
    assert "fal_webhooks" not in checks(cli("check-config", "--json", env={"FAL_KEY": KEY}))
    result = cli("check-config", env={"FAL_KEY": KEY, "FAL_WEBHOOK_JWKS_URL": jwks})
    assert f"✓ fal_webhooks: {jwks} serves 1 Ed25519 key(s)" in result.stdout
    assert "FAL_WEBHOOK_JWKS_URL" in result.stdout  # and in the settings table
    offline = checks(cli("check-config", "--offline", "--json",
                         env={"FAL_WEBHOOK_JWKS_URL": jwks}))
    assert offline["fal_webhooks"]["status"] == "skip"


def test_webhook_keys_out_of_reach_fail_the_check(cli: Cli, fal_emulator: FalEmulator) -> None:
    result = cli("check-config", "--json", env={
        "FAL_KEY": KEY, "FAL_WEBHOOK_JWKS_URL": fal_emulator.base_url + "/no/keys"})
    webhooks = checks(result)["fal_webhooks"]
    assert webhooks["status"] == "fail" and "answered 404" in webhooks["message"]
    assert "FAL_WEBHOOK_JWKS_URL" in webhooks["hint"]
    assert result.exit_code == 1
