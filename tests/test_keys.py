from __future__ import annotations

import posixpath

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from imagen4ctl.errors import ConfigError, UsageError
from imagen4ctl.keys import (
    DEFAULT_PREFIX,
    ParsedKey,
    generation_prefix,
    object_key,
    parse_object_key,
    user_prefix,
    validate_extension,
    validate_prefix,
    validate_user_id,
)


def test_object_key_layout() -> None:
    assert object_key(DEFAULT_PREFIX, "123456789", 42, 0, "png") == "generations/123456789/42/0.png"
    assert object_key("shared/imagen4/", "tg:7", 1, 3, ".JPG") == "shared/imagen4/tg:7/1/3.jpg"


def test_prefix_helpers() -> None:
    assert user_prefix(DEFAULT_PREFIX, "u1") == "generations/u1/"
    assert generation_prefix(DEFAULT_PREFIX, "u1", 9) == "generations/u1/9/"


@pytest.mark.parametrize(
    "user_id", ["123456789", "user@example.com", "a.b", "tg:42", "x-y_z+1", "A" * 64, "a..b"]
)
def test_valid_user_ids_pass_unchanged(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id",
    [
        "",
        ".",
        "..",
        ".hidden",
        "../../etc/passwd",
        "a/b",
        "a\\b",
        "a" * 65,
        "a" * 300,
        "nul\0byte",
        "new\nline",
        "trailing\n",
        "space d",
        "ünïcode",
        "%2e%2e",
    ],
)
def test_unsafe_user_ids_are_refused_with_the_rule(user_id: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_user_id(user_id)
    message = str(caught.value)
    assert message.startswith("invalid user id ")
    assert message.endswith(
        "use 1-64 characters from A-Z a-z 0-9 _ . @ : + -, not starting with a dot"
    )
    assert "\n" not in message and "\0" not in message
    assert len(message) < 200  # a 300-character id is shortened, not echoed


@pytest.mark.parametrize(
    "prefix", ["generations/", "a/", "shared/imagen4/", "with space/", "tg:1/images/"]
)
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("", "it is empty"),
        ("generations", "it must end with '/'"),
        ("/generations/", "it must be relative (no leading '/')"),
        ("../generations/", "it must not contain empty, '.' or '..' segments"),
        ("a/../b/", "it must not contain empty, '.' or '..' segments"),
        ("./a/", "it must not contain empty, '.' or '..' segments"),
        ("a//", "it must not contain empty, '.' or '..' segments"),
        ("/", "it must be relative (no leading '/')"),
        ("a\\b/", "it must not contain a backslash"),
        ("a\0/", "it must not contain control characters"),
    ],
)
def test_bad_prefixes_are_config_errors(prefix: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_prefix(prefix)
    assert str(caught.value) == f"invalid object key prefix {prefix!r}: {problem}"
    assert caught.value.hint is not None and "generations/" in caught.value.hint


@pytest.mark.parametrize("ext", ["png", "jpg", "jpeg", "webp", "PNG", ".webp"])
def test_extension_whitelist(ext: str) -> None:
    assert validate_extension(ext) == ext.lower().lstrip(".")


@pytest.mark.parametrize("ext", ["gif", "", "png/..", "svg", "png\0", "exe"])
def test_other_extensions_are_refused(ext: str) -> None:
    with pytest.raises(UsageError, match="use one of jpeg, jpg, png, webp"):
        validate_extension(ext)


@pytest.mark.parametrize(("generation_id", "n"), [(-1, 0), (1, -1), (True, 0), (1, False)])
def test_numbers_must_be_non_negative_ints(generation_id: int, n: int) -> None:
    with pytest.raises(UsageError, match="use a non-negative integer"):
        object_key(DEFAULT_PREFIX, "u1", generation_id, n, "png")


def test_parse_object_key() -> None:
    key = object_key(DEFAULT_PREFIX, "u@x", 12, 3, "webp")
    assert parse_object_key(DEFAULT_PREFIX, key) == ParsedKey("u@x", 12, 3, "webp")
    assert parse_object_key(DEFAULT_PREFIX, "other-app/u/1/0.png") is None
    assert parse_object_key(DEFAULT_PREFIX, "generations/u/01/0.png") is None
    assert parse_object_key(DEFAULT_PREFIX, "generations/.u/1/0.png") is None
    assert parse_object_key(DEFAULT_PREFIX, "generations/u/1/0.gif") is None
    assert parse_object_key(DEFAULT_PREFIX, "generations/.imagen4ctl-probe/abc") is None


_valid_user_ids = st.from_regex(r"[A-Za-z0-9_.@:+\-]{1,64}", fullmatch=True)
_prefixes = st.one_of(
    st.just(DEFAULT_PREFIX),
    st.from_regex(r"([A-Za-z0-9_.:-]{1,8}/){1,3}", fullmatch=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=8), min_size=1, max_size=4).map(lambda parts: "/".join(parts) + "/"),
)
_extensions = st.one_of(
    st.sampled_from(["png", "jpg", "jpeg", "webp", ".PNG", "..png"]), st.text(max_size=6)
)
_numbers = st.one_of(st.integers(min_value=0), st.integers())


@given(
    prefix=_prefixes,
    user_id=st.one_of(_valid_user_ids, st.text()),
    generation_id=_numbers,
    n=_numbers,
    ext=_extensions,
)
@settings(max_examples=400)
@example(prefix=DEFAULT_PREFIX, user_id="..", generation_id=1, n=0, ext="png")
@example(prefix=DEFAULT_PREFIX, user_id="../../etc/passwd", generation_id=1, n=0, ext="png")
@example(prefix="../", user_id="u", generation_id=1, n=0, ext="png")
def test_a_key_is_refused_or_stays_inside_its_prefix(
    prefix: str, user_id: str, generation_id: int, n: int, ext: str
) -> None:
    try:
        key = object_key(prefix, user_id, generation_id, n, ext)
    except UsageError:
        event("refused")
        return
    event("accepted")
    assert key.startswith(prefix)
    assert ".." not in key.split("/")
    assert not key.startswith("/")
    assert "\\" not in key
    assert "\0" not in key
    assert posixpath.normpath(key) == key
    assert parse_object_key(prefix, key) == ParsedKey(
        user_id, generation_id, n, ext.lower().removeprefix(".")
    )
