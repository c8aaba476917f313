"""DATABASE_URL is parsed once, without SQLAlchemy; the engine and the reports agree on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from imagen4ctl.db.session import parse_database_url
from imagen4ctl.db.url import parse_url
from imagen4ctl.errors import ConfigError

PG_URLS = [
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://u:p%40ss%3Aw0rd@db.example:6543/app?sslmode=require",
    "postgres://u@/app?host=/var/run/postgresql",
    "postgresql://u:secret@[::1]:5432/app?options=-csearch_path%3Dt_1",
    "postgresql://db.example/app",
]


@pytest.mark.parametrize("url", PG_URLS)
def test_postgresql_urls_read_as_sqlalchemy_reads_them(url: str) -> None:
    ours = parse_url(url)
    theirs = make_url(url)
    assert ours.backend == "postgresql"
    assert (ours.username, ours.password, ours.host, ours.port, ours.database) == (
        theirs.username, theirs.password, theirs.host, theirs.port, theirs.database)
    assert dict(ours.query) == dict(theirs.query)
    engine_url = parse_database_url(url)
    assert engine_url.drivername == "postgresql+psycopg2"
    assert engine_url.set(drivername="x") == theirs.set(drivername="x")


def test_libpq_keywords_carry_every_part() -> None:
    location = parse_url(PG_URLS[1])
    assert location.libpq_params() == {
        "host": "db.example", "port": "6543", "dbname": "app", "user": "u",
        "password": "p@ss:w0rd", "sslmode": "require"}
    assert parse_url(PG_URLS[3]).libpq_params()["options"] == "-csearch_path=t_1"


def test_sqlite_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = parse_url("sqlite:///data/images.db")
    assert relative.sqlite_path == tmp_path / "data" / "images.db"
    assert parse_url(f"sqlite:///{tmp_path}/x.db").sqlite_path == tmp_path / "x.db"
    assert parse_database_url("sqlite:///data/images.db").database == str(
        tmp_path / "data" / "images.db")
    for memory in ("sqlite://", "sqlite:///:memory:"):
        assert parse_url(memory).is_sqlite and parse_url(memory).sqlite_path is None


def test_describe_never_shows_the_password() -> None:
    text = parse_url("postgresql://u:pw-canary-Zq8Xv2Lp9Wm4@db:5433/app").describe()
    assert text == "PostgreSQL at db:5433/app"
    assert "canary" not in repr(parse_url("postgresql://u:pw-canary-Zq8Xv2Lp9Wm4@db/app"))


@pytest.mark.parametrize(("url", "message"), [
    ("garbage", "DATABASE_URL is not a database URL"),
    ("postgresql://u@h:port/db", "DATABASE_URL is not a database URL"),
    ("mysql://u:pw-canary-Zq8Xv2Lp9Wm4@h/db", "uses 'mysql': imagen4ctl supports sqlite and "
     "postgresql"),
])
def test_bad_urls_are_one_line_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_url(url)
    assert message in caught.value.message
    assert "canary" not in caught.value.message
