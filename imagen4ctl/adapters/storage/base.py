"""The storage interface every backend implements, and the rules they share.

Callers hold a `Storage` and ask it what they need to know (do its links expire? is the
bucket there?) instead of asking which backend it is, so a new backend is one new module.
"""

from __future__ import annotations

import io
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from imagen4ctl.errors import StorageError, UsageError
from imagen4ctl.keys import validate_prefix

PROBE_FOLDER = ".imagen4ctl-probe/"
MAX_URL_LIFETIME = timedelta(days=7)  # the SigV4 limit; applied to both for one behaviour
TMP_PREFIX = ".imagen4ctl-tmp-"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. `content_type` is None where the source does not say (S3 listings)."""

    key: str
    size: int
    last_modified: datetime  # timezone-aware UTC
    content_type: str | None = None


def short_repr(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def check_key(key: str) -> str:
    """Return `key` if it is a plain relative object key; refuse anything that could escape."""
    problem: str | None = None
    if not isinstance(key, str) or not key:
        problem = "it is empty"
    elif len(key.encode("utf-8", "surrogatepass")) > 1024:
        problem = "it is longer than 1024 bytes"
    elif key.startswith("/"):
        problem = "it must be relative (no leading '/')"
    elif key.endswith("/"):
        problem = "it names a folder, not an object"
    elif "\\" in key:
        problem = "it must not contain a backslash"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        problem = "it must not contain control characters"
    elif any(segment in ("", ".", "..") for segment in key.split("/")):
        problem = "it must not contain empty, '.' or '..' segments"
    elif key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
        problem = f"names starting with {TMP_PREFIX!r} are reserved for unfinished uploads"
    if problem is not None:
        shown = short_repr(key) if isinstance(key, str) else repr(key)
        raise UsageError(f"refusing object key {shown}: {problem}")
    return key


def check_list_prefix(prefix: str) -> str:
    """A listing prefix may end mid-name (`generations/12`), but must not climb or be absolute."""
    if prefix == "":
        return prefix
    problem: str | None = None
    segments = prefix.split("/")
    if prefix.startswith("/"):
        problem = "it must be relative (no leading '/')"
    elif "\\" in prefix or any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        problem = "it must not contain backslashes or control characters"
    elif any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
        problem = "it must not contain empty, '.' or '..' segments"
    if problem is not None:
        raise UsageError(f"refusing listing prefix {short_repr(prefix)}: {problem}")
    return prefix


def check_expires(expires: timedelta) -> timedelta:
    if not timedelta(seconds=1) <= expires <= MAX_URL_LIFETIME:
        raise UsageError(f"a URL lifetime must be between 1 second and 7 days, got {expires}")
    return expires


def check_put_args(content_type: str, length: int | None) -> None:
    if not content_type or any(c in content_type for c in "\r\n\0"):
        raise UsageError(f"invalid content type {content_type!r}")
    if length is not None and length < 0:
        raise UsageError(f"invalid upload length {length}: use a non-negative size or None")


class UploadSource:
    """The caller's stream as an upload reads it.

    Each `read(n)` is filled up to n bytes (minio would otherwise grow a part by many small
    concatenations), a declared `length` is enforced, and a failure of the caller's own
    stream is remembered so it is re-raised as itself, not blamed on the storage.
    """

    def __init__(self, stream: BinaryIO, length: int | None, key: str) -> None:
        self._stream = stream
        self._length = length
        self._key = key
        self.consumed = 0
        self.source_failed = False

    def read(self, size: int = -1) -> bytes:
        remaining = None if self._length is None else self._length - self.consumed
        if remaining is not None and (size < 0 or size > remaining):
            size = remaining
        chunks: list[bytes] = []
        got = 0
        while size < 0 or got < size:
            want = CHUNK if size < 0 else size - got
            try:
                data = self._stream.read(want)
            except BaseException:
                self.source_failed = True
                raise
            if not data:
                break
            chunks.append(bytes(data))
            got += len(data)
        self.consumed += got
        if self._length is not None and got == 0 and self.consumed < self._length:
            raise StorageError(
                f"the stream for {short_repr(self._key)} ended after {self.consumed} of "
                f"{self._length} announced bytes; nothing was stored",
            )
        return b"".join(chunks)


class Storage(ABC):
    """One place objects are kept. Keys are relative, '/'-separated, e.g. from `keys.object_key`."""

    @abstractmethod
    def describe(self) -> str:
        """Where objects go, for humans (`s3://imagen4 at 127.0.0.1:9000`); never a secret."""

    @abstractmethod
    def bucket_exists(self) -> bool:
        """Whether the bucket (or local folder) is there; errors only if it cannot be asked."""

    @abstractmethod
    def create_if_missing(self) -> None:
        """Create the bucket (or folder) if this backend may do so on first use; else nothing."""

    @property
    @abstractmethod
    def links_expire(self) -> bool:
        """Whether `presigned_url` links stop working after their lifetime."""

    @abstractmethod
    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str, length: int | None = None
    ) -> ObjectInfo:
        """Store `stream` under `key` without holding it all in memory; replaces any old one."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object; use it as a context manager so it gets closed."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """What is stored under `key`, or None if nothing is."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, fetched as iterated.

        The order is the server's (SeaweedFS walks folders, AWS sorts keys); sort if it matters.
        """

    @abstractmethod
    def presigned_url(self, key: str, expires: timedelta) -> str:
        """A URL that reads the object without credentials until `expires` has passed."""

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), content_type=content_type, length=len(data))

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def probe(self, prefix: str = "") -> None:
        """Write, read back and delete a small object: proves the storage works end to end."""
        if prefix:
            validate_prefix(prefix)
        token = uuid.uuid4().hex
        key = f"{prefix}{PROBE_FOLDER}{token}"
        payload = f"imagen4ctl storage probe {token}\n".encode()
        self.put_bytes(key, payload, content_type="text/plain")
        try:
            read_back = self.get(key)
        except BaseException:
            # A failed probe must not leave litter behind; the read error is what matters.
            try:
                self.delete(key)
            except StorageError:
                pass
            raise
        self.delete(key)
        if read_back != payload:
            raise StorageError(
                f"{self.describe()} returned different bytes than were written for the probe "
                f"{key!r} ({len(read_back)} instead of {len(payload)} bytes)",
                hint="The server or a proxy in front of it alters objects; check its setup.",
            )
        if self.stat(key) is not None:
            raise StorageError(
                f"{self.describe()} still has the probe {key!r} after deleting it",
                hint="Deletes are ignored there: check the key's permissions (s3:DeleteObject).",
            )

