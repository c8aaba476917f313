"""Object keys: `{prefix}{user_id}/{generation_id}/{n}.{ext}`.

The bucket may be shared with another application, so every key imagen4ctl writes, lists
or deletes lives under its own prefix. User ids arrive from the command line and from the
database; they are validated here so that no id can climb out of the prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from imagen4ctl.errors import ConfigError, UsageError

# How long the links imagen4ctl hands out for stored images live (presigned S3 URLs).
LINK_EXPIRY = timedelta(hours=1)
_REMOTE = ("https://", "http://")


def is_remote(entry: str) -> bool:
    """A `result_urls` entry that is still a URL (fal's CDN), not an object key."""
    return entry.startswith(_REMOTE)

DEFAULT_PREFIX = "generations/"
ALLOWED_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp"})

USER_ID_RULE = "1-64 characters from A-Z a-z 0-9 _ . @ : + -, not starting with a dot"
_USER_ID = re.compile(r"[A-Za-z0-9_.@:+\-]{1,64}")
_KEY = re.compile(
    # Numbers without leading zeros, so a parsed key always rebuilds to itself.
    r"(?P<user_id>[A-Za-z0-9_.@:+\-]{1,64})"
    r"/(?P<generation_id>0|[1-9][0-9]*)/(?P<n>0|[1-9][0-9]*)\.(?P<ext>[a-z]+)"
)


@dataclass(frozen=True)
class ParsedKey:
    user_id: str
    generation_id: int
    n: int
    ext: str


def _shown(value: str, limit: int = 40) -> str:
    """A short, escaped rendering of user input, so NULs and 300-char ids stay one line."""
    if len(value) > limit:
        return repr(value[:limit]) + f"… ({len(value)} characters)"
    return repr(value)


def validate_user_id(user_id: str) -> str:
    """Return `user_id` unchanged if it is safe as one key segment, else raise UsageError."""
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id) or user_id[0] == ".":
        shown = _shown(user_id) if isinstance(user_id, str) else repr(user_id)
        raise UsageError(
            f"invalid user id {shown}: use {USER_ID_RULE}",
            hint="Pass the user id exactly as the image service stores it, e.g. 123456789.",
        )
    return user_id


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it is a clean relative folder-like prefix such as `generations/`."""
    problem = _prefix_problem(prefix)
    if problem is not None:
        raise ConfigError(
            f"invalid object key prefix {_shown(prefix)}: {problem}",
            hint=f"Use a relative prefix ending in '/', such as {DEFAULT_PREFIX!r}.",
        )
    return prefix


def _prefix_problem(prefix: str) -> str | None:
    if not prefix:
        return "it is empty"
    if not prefix.endswith("/"):
        return "it must end with '/'"
    if prefix.startswith("/"):
        return "it must be relative (no leading '/')"
    if "\\" in prefix:
        return "it must not contain a backslash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        return "it must not contain control characters"
    for segment in prefix[:-1].split("/"):
        if segment in ("", ".", ".."):
            return "it must not contain empty, '.' or '..' segments"
    return None


def validate_extension(ext: str) -> str:
    """Normalise `.PNG`/`png` to `png`; refuse anything outside the image whitelist."""
    normalised = ext.lower().removeprefix(".") if isinstance(ext, str) else ""
    if normalised not in ALLOWED_EXTENSIONS:
        allowed = ", ".join(sorted(ALLOWED_EXTENSIONS))
        raise UsageError(
            f"invalid image extension {_shown(str(ext))}: use one of {allowed}",
        )
    return normalised


def _validate_number(name: str, value: int) -> int:
    # bool is an int subclass; True would silently become "1".
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"invalid {name} {value!r}: use a non-negative integer")
    return value


def user_prefix(prefix: str, user_id: str) -> str:
    """`{prefix}{user_id}/`: everything stored for one user."""
    return f"{validate_prefix(prefix)}{validate_user_id(user_id)}/"


def generation_prefix(prefix: str, user_id: str, generation_id: int) -> str:
    """`{prefix}{user_id}/{generation_id}/`: every image of one generation."""
    generation_id = _validate_number("generation id", generation_id)
    return f"{user_prefix(prefix, user_id)}{generation_id}/"


def object_key(prefix: str, user_id: str, generation_id: int, n: int, ext: str) -> str:
    """The key of image `n` of a generation, e.g. `generations/42/7/0.png`."""
    n = _validate_number("image number", n)
    ext = validate_extension(ext)
    return f"{generation_prefix(prefix, user_id, generation_id)}{n}.{ext}"


def parse_object_key(prefix: str, key: str) -> ParsedKey | None:
    """The parts of a key `object_key` could have built, or None for any other key."""
    if not key.startswith(validate_prefix(prefix)):
        return None
    match = _KEY.fullmatch(key[len(prefix) :])
    if match is None or match["user_id"][0] == "." or match["ext"] not in ALLOWED_EXTENSIONS:
        return None
    return ParsedKey(
        user_id=match["user_id"],
        generation_id=int(match["generation_id"]),
        n=int(match["n"]),
        ext=match["ext"],
    )
