"""The one settings module: key resolution for every combination, sources, masking."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagen4ctl.errors import ConfigError
from imagen4ctl.settings import (
    Settings,
    Value,
    export_fal_key,
    fingerprint,
    mask_url,
    near_misses,
    resolve_fal_key,
)


def values(**raw: str) -> dict[str, Value]:
    return {name: Value(name, value, "env") for name, value in raw.items()}


@pytest.mark.parametrize(
    ("env", "key", "source", "status", "words"),
    [
        ({}, None, None, "fail", ["FAL_KEY is not set"]),
        ({"FAL_KEY": "k1"}, "k1", "FAL_KEY", "ok", ["FAL_KEY"]),
        ({"FAL_API_KEY": "k2"}, "k2", "FAL_API_KEY", "warn", ["only FAL_API_KEY", "root cause"]),
        ({"FAL_KEY": "k1", "FAL_API_KEY": "k1"}, "k1", "FAL_KEY", "ok", ["the same"]),
        ({"FAL_KEY": "k1", "FAL_API_KEY": "k2"}, "k1", "FAL_KEY", "warn",
         ["differ", "using FAL_KEY"]),
        ({"FAL_KEY_ID": "id", "FAL_KEY_SECRET": "s"}, "id:s", "FAL_KEY_ID:FAL_KEY_SECRET", "ok",
         []),
        ({"FAL_KEY_ID": "id"}, None, None, "fail", ["FAL_KEY_SECRET is not"]),
        ({"FAL_KEY_SECRET": "s"}, None, None, "fail", ["FAL_KEY_ID is not"]),
        ({"FAL_KEY": "k1", "FAL_KEY_ID": "id"}, None, None, "fail", ["FAL_KEY_SECRET"]),
        ({"FAL_API_KEY": "k2", "FAL_KEY_ID": "id", "FAL_KEY_SECRET": "s"}, "k2", "FAL_API_KEY",
         "warn", []),
        ({"FAL_KEY": "", "FAL_API_KEY": "k2"}, "k2", "FAL_API_KEY", "warn", []),
    ],
)
def test_fal_key_resolution(
    env: dict[str, str], key: str | None, source: str | None, status: str, words: list[str]
) -> None:
    resolved = resolve_fal_key(values(**env))
    assert (resolved.value, resolved.source, resolved.status) == (key, source, status)
    for word in words:
        assert word in resolved.message
    if status != "ok":
        assert resolved.hint
    assert (key or "zzz") not in repr(resolved)


def test_missing_key_hint_names_both_variables() -> None:
    hint = resolve_fal_key({}).hint or ""
    assert "FAL_KEY" in hint and "FAL_API_KEY" in hint


@given(fal_key=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
       api_key=st.one_of(st.none(), st.text(min_size=1, max_size=8)))
def test_precedence_property(fal_key: str | None, api_key: str | None) -> None:
    env = {k: v for k, v in {"FAL_KEY": fal_key, "FAL_API_KEY": api_key}.items() if v}
    resolved = resolve_fal_key(values(**env))
    assert resolved.value == (fal_key or api_key or None)
    conflict = bool(fal_key and api_key and fal_key != api_key)
    assert ("differ" in resolved.message) == conflict


def test_export_only_when_fal_key_unset() -> None:
    environ: dict[str, str] = {"FAL_API_KEY": "k2"}
    resolved = resolve_fal_key(values(**environ))
    assert export_fal_key(resolved, environ) is True
    assert environ["FAL_KEY"] == "k2"
    environ = {"FAL_KEY": "k1", "FAL_API_KEY": "k2"}
    assert export_fal_key(resolve_fal_key(values(**environ)), environ) is False
    assert environ["FAL_KEY"] == "k1"


def test_sources_env_dotenv_default_unset(tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text("FAL_KEY=from-file\nMINIO_BUCKET=from-file\nSSL_CERT_FILE=/ca.pem\n")
    environ = {"MINIO_BUCKET": "from-env"}
    settings = Settings.load(env_file, environ=environ)
    assert settings.values["MINIO_BUCKET"].source == "env"
    assert settings.minio_bucket == "from-env"
    assert settings.values["FAL_KEY"].source == ".env"
    assert settings.values["FAL_KEY"].source_label == f".env ({env_file})"
    assert settings.values["STUCK_AFTER"].source == "default"
    assert settings.values["MINIO_ENDPOINT"].source == "unset"
    # loaded into the environment without overriding it, so libraries see it too
    assert environ == {"MINIO_BUCKET": "from-env", "FAL_KEY": "from-file",
                       "SSL_CERT_FILE": "/ca.pem"}


def test_default_env_file_is_dot_env_in_working_dir(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text("IMAGEN4_USER_ID=42\n")
    settings = Settings.load(environ={})
    assert settings.default_user_id == "42"
    assert settings.values["IMAGEN4_USER_ID"].source == ".env"


@pytest.mark.parametrize("line", ["FAL_KEY='unterminated", "just some words", "=value"])
def test_malformed_env_line_is_a_one_line_error(tmp_path: Path, line: str) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"A=1\n{line}\n")
    with pytest.raises(ConfigError) as error:
        Settings.load(env_file, environ={})
    assert "line 2" in error.value.message
    assert error.value.exit_code == 2


def test_missing_env_file_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "nope.env", environ={})


def test_secret_display_is_a_fingerprint() -> None:
    secret = "sk-live-0123456789abcdef"
    shown = Value("FAL_KEY", secret, "env").display
    assert shown == fingerprint(secret)
    assert shown.startswith("set (24 chars, sha256 ")
    assert secret[:8] not in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bot:hunter22@db:5432/app", "postgresql://bot:***@db:5432/app"),
        ("postgresql://bot@db/app", "postgresql://bot@db/app"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("postgresql://bot:p@ss:w@rd@db/app", "postgresql://bot:***@db/app"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_near_misses() -> None:
    found = near_misses(["FAL_API_TOKEN", "FALKEY", "FAL_SECRET", "MINIO_SECRET",
                         "DATABASE_URI", "PATH", "FAL_KEY", "FAL_HOME_DIR", "MINIO_BUCKETT"])
    assert found == {"FAL_API_TOKEN": "FAL_KEY", "FALKEY": "FAL_KEY",
                     "FAL_SECRET": "FAL_KEY_SECRET", "MINIO_SECRET": "MINIO_SECRET_KEY",
                     "DATABASE_URI": "DATABASE_URL", "MINIO_BUCKETT": "MINIO_BUCKET"}


@pytest.mark.parametrize("endpoint", ["http://minio:9000", "minio:9000/bucket", " "])
def test_minio_endpoint_must_be_host_port(endpoint: str) -> None:
    settings = Settings.load(environ={"MINIO_ENDPOINT": endpoint}, default_env_file=False)
    if endpoint.strip():
        with pytest.raises(ConfigError, match="MINIO_ENDPOINT"):
            _ = settings.minio_endpoint


@pytest.mark.parametrize(("name", "raw"), [("STUCK_AFTER", "-5m"), ("STUCK_AFTER", "10x"),
                                           ("IMAGEN4_MAX_IMAGE_BYTES", "lots"),
                                           ("MINIO_SECURE", "maybe"),
                                           ("IMAGEN4_FOLLOW", "sometimes")])
def test_bad_values_name_their_variable(name: str, raw: str) -> None:
    settings = Settings.load(environ={name: raw}, default_env_file=False)
    accessor = {"STUCK_AFTER": "stuck_after", "IMAGEN4_MAX_IMAGE_BYTES": "max_image_bytes",
                "MINIO_SECURE": "minio_secure", "IMAGEN4_FOLLOW": "follow"}[name]
    with pytest.raises(ConfigError, match=name):
        getattr(settings, accessor)


def test_env_example_lists_every_variable_with_a_comment() -> None:
    from imagen4ctl.settings import VARIABLES

    lines = (Path(__file__).parent.parent / ".env.example").read_text().splitlines()
    for var in VARIABLES:
        [index] = [i for i, line in enumerate(lines)
                   if line.lstrip("# ").startswith(f"{var.name}=")]
        assert lines[index - 1].startswith("# "), var.name


def test_variable_names_live_only_in_settings() -> None:
    """Every environment variable name appears in settings.py and nowhere else in the package."""
    import re

    from imagen4ctl.settings import VARIABLES

    package = Path(__file__).parent.parent / "imagen4ctl"
    for path in package.rglob("*.py"):
        if path.name == "settings.py" or "emulator" in path.parts:
            continue
        source = path.read_text()
        for var in VARIABLES:
            for match in re.finditer(rf"(os\.environ|getenv|environ\.get)\W+{var.name}\b",
                                     source):
                raise AssertionError(f"{path} reads {var.name} itself: {match.group(0)}")


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", ""])
def test_fal_max_concurrent_is_a_whole_number_from_1(raw: str) -> None:
    settings = Settings.load(environ={"FAL_MAX_CONCURRENT": raw}, default_env_file=False)
    if raw == "":  # empty is unset: the default
        assert settings.fal_max_concurrent == 2
        return
    with pytest.raises(ConfigError, match="FAL_MAX_CONCURRENT"):
        _ = settings.fal_max_concurrent


def test_fal_max_concurrent_defaults_to_fals_starting_limit() -> None:
    assert Settings.load(environ={}, default_env_file=False).fal_max_concurrent == 2
    assert Settings.load(environ={"FAL_MAX_CONCURRENT": " 8 "},
                         default_env_file=False).fal_max_concurrent == 8


def test_the_webhook_jwks_url_is_fals_unless_set() -> None:
    unset = Settings.load(environ={}, default_env_file=False)
    assert unset.webhook_jwks_url == "https://rest.alpha.fal.ai/.well-known/jwks.json"
    assert not unset.webhook_jwks_set  # check-config probes it only when set
    mine = Settings.load(environ={"FAL_WEBHOOK_JWKS_URL": "https://keys.example/jwks.json"},
                         default_env_file=False)
    assert (mine.webhook_jwks_url, mine.webhook_jwks_set) == (
        "https://keys.example/jwks.json", True)
    with pytest.raises(ConfigError, match="FAL_WEBHOOK_JWKS_URL must be an http"):
        _ = Settings.load(environ={"FAL_WEBHOOK_JWKS_URL": "keys.example/jwks.json"},
                          default_env_file=False).webhook_jwks_url
