"""Where images live: an S3 bucket (MinIO, SeaweedFS, AWS) or a local folder, behind one interface.

This is the only module that talks to `minio`/`urllib3`. They are imported inside
`S3Storage` so that `imagen4ctl --help` never pays for them. Every failure leaves here as
a `StorageError` whose one-line message and hint say what to fix; secrets never appear.
"""

from __future__ import annotations

import errno
import io
import mimetypes
import os
import ssl
import stat as stat_mode
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast
from urllib.parse import urlsplit

from imagen4ctl.errors import ConfigError, StorageError, UsageError
from imagen4ctl.keys import validate_prefix

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from minio import Minio
    from minio.error import S3Error
    from urllib3 import BaseHTTPResponse, PoolManager
    from urllib3.exceptions import HTTPError

    from imagen4ctl.settings import Settings

# Large enough that a 2 MB image is one request, small enough that an upload of unknown
# length holds at most one part in memory (minio's minimum is 5 MiB).
PART_SIZE = 10 * 1024 * 1024
PROBE_FOLDER = ".imagen4ctl-probe/"
MAX_URL_LIFETIME = timedelta(days=7)  # the SigV4 limit; applied to both for one behaviour
_TMP_PREFIX = ".imagen4ctl-tmp-"
_CHUNK = 1024 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_CREDENTIAL_CODES = frozenset(
    {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}
)
_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "NoSuchObject"})


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. `content_type` is None where the source does not say (S3 listings)."""

    key: str
    size: int
    last_modified: datetime  # timezone-aware UTC
    content_type: str | None = None


def _shown(value: str, limit: int = 80) -> str:
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
    elif key.rsplit("/", 1)[-1].startswith(_TMP_PREFIX):
        problem = f"names starting with {_TMP_PREFIX!r} are reserved for unfinished uploads"
    if problem is not None:
        shown = _shown(key) if isinstance(key, str) else repr(key)
        raise UsageError(f"refusing object key {shown}: {problem}")
    return key


def _check_list_prefix(prefix: str) -> str:
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
        raise UsageError(f"refusing listing prefix {_shown(prefix)}: {problem}")
    return prefix


def _check_expires(expires: timedelta) -> timedelta:
    if not timedelta(seconds=1) <= expires <= MAX_URL_LIFETIME:
        raise UsageError(f"a URL lifetime must be between 1 second and 7 days, got {expires}")
    return expires


def _check_put_args(content_type: str, length: int | None) -> None:
    if not content_type or any(c in content_type for c in "\r\n\0"):
        raise UsageError(f"invalid content type {content_type!r}")
    if length is not None and length < 0:
        raise UsageError(f"invalid upload length {length}: use a non-negative size or None")


class _UploadSource:
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
            want = _CHUNK if size < 0 else size - got
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
                f"the stream for {_shown(self._key)} ended after {self.consumed} of "
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


# --------------------------------------------------------------------------- S3


def _check_endpoint(endpoint: str) -> str:
    problem: str | None = None
    host = ""
    if not endpoint or endpoint != endpoint.strip():
        problem = "it is empty or has spaces around it"
    elif "://" in endpoint:
        problem = "write it without a scheme such as 'http://'"
    else:
        try:
            parts = urlsplit("//" + endpoint)
            parts.port  # noqa: B018 -- raises ValueError for a non-numeric or too-large port
        except ValueError:
            problem = "the port must be a number from 1 to 65535"
        else:
            host = parts.hostname or ""
            if parts.path or parts.query or parts.fragment:
                problem = "it must not contain a path"
            elif parts.username is not None or parts.password is not None:
                problem = "it must not contain credentials"
            elif not host:
                problem = "the host is missing"
            elif parts.port == 0:
                problem = "the port must be a number from 1 to 65535"
    if problem is not None:
        raise ConfigError(
            f"invalid S3 endpoint {_shown(endpoint)}: {problem}",
            hint="Set MINIO_ENDPOINT to host:port, e.g. 127.0.0.1:9000 (TLS is a separate "
            "setting).",
        )
    return endpoint


def _check_bucket(bucket: str) -> str:
    from minio.helpers import check_bucket_name

    try:
        check_bucket_name(bucket, strict=True)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"invalid bucket name {_shown(str(bucket))}",
            hint="Set MINIO_BUCKET to 3-63 lowercase letters, digits, dots and hyphens.",
        ) from exc
    return bucket


def _http_client(connect_timeout: float, read_timeout: float, secure: bool) -> PoolManager:
    """An urllib3 pool that never retries: a dead server must fail in seconds, not minutes.

    minio's own default retries 5 times with backoff and waits 5 minutes per read; minio
    itself only repeats a request once, on a region redirect (`RetryHead`).
    """
    import urllib3

    ssl_context: ssl.SSLContext | None = None
    if secure:
        import certifi

        ssl_context = ssl.create_default_context(cafile=certifi.where())
        # Like minio's default (certifi), plus the system store and SSL_CERT_FILE, which
        # OpenSSL reads itself, so a private CA works without a code change.
        ssl_context.load_default_certs()
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        retries=False,
        maxsize=10,
        ssl_context=ssl_context,
    )


class S3Storage(Storage):
    """A bucket on an S3 server (MinIO, SeaweedFS, AWS), through the `minio` client."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        timeout: float = 5.0,
        region: str | None = None,
    ) -> None:
        self.endpoint = _check_endpoint(endpoint)
        self.bucket = _check_bucket(bucket)
        if bool(access_key) != bool(secret_key):
            missing = "MINIO_SECRET_KEY" if access_key else "MINIO_ACCESS_KEY"
            raise ConfigError(
                f"half an S3 key pair: {missing} is empty",
                hint="Set both MINIO_ACCESS_KEY and MINIO_SECRET_KEY, or neither for anonymous "
                "access.",
            )
        if not timeout > 0:
            raise ConfigError(f"invalid S3 timeout {timeout!r}: use a positive number of seconds")
        self.access_key = access_key
        self.secure = secure
        self.region = region
        self.timeout = timeout
        # A read may wait while the server commits a whole 10 MiB part, so it gets more
        # room than connecting; a hung server still fails within seconds.
        self.read_timeout = 3 * timeout

        from minio import Minio

        try:
            self._client: Minio = Minio(
                endpoint,
                access_key=access_key or None,
                secret_key=secret_key or None,
                secure=secure,
                region=region,
                http_client=_http_client(timeout, self.read_timeout, secure),
            )
        except ValueError as exc:
            # minio's message may quote the endpoint only; still, keep ours.
            raise ConfigError(
                f"invalid S3 endpoint {_shown(endpoint)}",
                hint="Set MINIO_ENDPOINT to host:port, e.g. 127.0.0.1:9000.",
            ) from exc

    def __repr__(self) -> str:
        return (
            f"S3Storage(endpoint={self.endpoint!r}, bucket={self.bucket!r}, "
            f"access_key={self.access_key!r}, secure={self.secure!r})"
        )

    def describe(self) -> str:
        tls = " (TLS)" if self.secure else ""
        return f"s3://{self.bucket} at {self.endpoint}{tls}"

    # -- error translation -------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from minio.error import InvalidResponseError, S3Error, ServerError
        from urllib3.exceptions import HTTPError

        try:
            yield
        except S3Error as exc:
            raise self._s3_error(exc, action) from exc
        except ServerError as exc:
            raise StorageError(
                f"the S3 server at {self.endpoint} failed to {action} (HTTP {exc.status_code})",
                hint="Look at the S3 server's log; it may be starting up or out of disk.",
            ) from exc
        except InvalidResponseError as exc:
            raise StorageError(
                f"{self.endpoint} answered {action} with something that is not an S3 reply",
                hint="Is MINIO_ENDPOINT the S3 API port (not a web console or a proxy page)?",
            ) from exc
        except HTTPError as exc:
            raise self._network_error(exc, action) from exc

    def _s3_error(self, exc: S3Error, action: str) -> StorageError:
        code = exc.code or "unknown"
        if code in _CREDENTIAL_CODES:
            return StorageError(
                f"the S3 server at {self.endpoint} rejected the credentials of access key "
                f"{self.access_key!r} ({code})",
                hint="Check MINIO_ACCESS_KEY / MINIO_SECRET_KEY.",
            )
        if code == "AccessDenied":
            who = f"access key {self.access_key!r}" if self.access_key else "anonymous access"
            return StorageError(
                f"the S3 server at {self.endpoint} denied {who} to {action} in bucket "
                f"{self.bucket!r} (AccessDenied)",
                hint=f"Check MINIO_ACCESS_KEY / MINIO_SECRET_KEY, and that the key may use "
                f"bucket {self.bucket!r}.",
            )
        if code == "NoSuchBucket":
            return self._missing_bucket()
        if code in _MISSING_OBJECT_CODES:
            return StorageError(
                f"cannot {action}: no such object in {self.describe()}",
                hint="Check the key, and that MINIO_BUCKET is the bucket the images were "
                "stored in.",
            )
        detail = " ".join((exc.message or "").split())[:200]
        return StorageError(
            f"the S3 server at {self.endpoint} refused to {action}: {code}"
            + (f": {detail}" if detail else ""),
            hint="Look at the S3 server's log for the request.",
        )

    def _missing_bucket(self) -> StorageError:
        return StorageError(
            f"bucket {self.bucket!r} does not exist at {self.endpoint}",
            hint=f"Create bucket {self.bucket!r} or set MINIO_BUCKET to an existing bucket.",
        )

    def _network_error(self, exc: HTTPError, action: str) -> StorageError:
        from urllib3.exceptions import (
            ConnectTimeoutError,
            MaxRetryError,
            NameResolutionError,
            NewConnectionError,
            ProtocolError,
            ReadTimeoutError,
            SSLError,
        )

        reason: BaseException = exc
        if isinstance(exc, MaxRetryError) and exc.reason is not None:
            reason = exc.reason
        down_hint = "Is the server at MINIO_ENDPOINT running? Start it or fix MINIO_ENDPOINT."
        where = f"the S3 server at {self.endpoint}"
        if isinstance(reason, NameResolutionError):
            return StorageError(
                f"cannot reach {where}: its host name does not resolve",
                hint="Fix the host in MINIO_ENDPOINT.",
            )
        if isinstance(reason, NewConnectionError):
            cause = reason.__cause__ or reason.__context__
            if isinstance(cause, ConnectionRefusedError):
                why = "connection refused"
            elif isinstance(cause, OSError) and cause.strerror:
                why = cause.strerror.lower()
            else:
                why = "no connection"
            return StorageError(f"cannot reach {where}: {why}", hint=down_hint)
        if isinstance(reason, ConnectTimeoutError):
            return StorageError(
                f"cannot reach {where}: no connection within {self.timeout:g}s", hint=down_hint
            )
        if isinstance(reason, ReadTimeoutError):
            return StorageError(
                f"{where} did not answer within {self.read_timeout:g}s while trying to {action}",
                hint="Is the server at MINIO_ENDPOINT hung or overloaded? Check its log.",
            )
        if isinstance(reason, SSLError):
            return StorageError(
                f"TLS with {where} failed while trying to {action}",
                hint="Check MINIO_ENDPOINT, whether the server speaks HTTPS at all, and that "
                "its certificate is trusted (SSL_CERT_FILE).",
            )
        if isinstance(reason, ProtocolError):
            return StorageError(
                f"the connection to {where} broke while trying to {action}", hint=down_hint
            )
        return StorageError(f"cannot {action} at {where}: {type(reason).__name__}", hint=down_hint)

    # -- operations ----------------------------------------------------------------------

    def bucket_exists(self) -> bool:
        with self._errors(f"check bucket {self.bucket!r}"):
            return self._client.bucket_exists(self.bucket)

    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str, length: int | None = None
    ) -> ObjectInfo:
        check_key(key)
        _check_put_args(content_type, length)
        source = _UploadSource(stream, length, key)
        with self._errors(f"upload {key!r}"):
            self._client.put_object(
                self.bucket,
                key,
                cast(BinaryIO, source),
                -1 if length is None else length,
                content_type=content_type,
                part_size=PART_SIZE,
                # Parallel part uploads would hold several parts in memory at once.
                num_parallel_uploads=1,
            )
        info = self.stat(key)
        if info is None:
            raise StorageError(
                f"{key!r} is missing from {self.describe()} right after it was uploaded",
                hint="Another client deletes objects in this bucket, or the server drops them.",
            )
        return info

    def open(self, key: str) -> BinaryIO:
        check_key(key)
        action = f"read {key!r}"
        with self._errors(action):
            response = self._client.get_object(self.bucket, key)
        reader = _ResponseReader(response, self, action)
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=_CHUNK))

    def stat(self, key: str) -> ObjectInfo | None:
        from minio.error import S3Error

        check_key(key)
        with self._errors(f"look up {key!r}"):
            try:
                obj = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code not in _MISSING_OBJECT_CODES:
                    raise
                obj = None
        if obj is None:
            # A HEAD on a missing bucket also answers 404 without a body, which minio reads
            # as NoSuchKey; tell the two apart so a typo in MINIO_BUCKET is not "no image".
            if not self.bucket_exists():
                raise self._missing_bucket()
            return None
        return ObjectInfo(
            key=key,
            size=obj.size or 0,
            last_modified=_utc(obj.last_modified),
            content_type=obj.content_type,
        )

    def delete(self, key: str) -> None:
        from minio.error import S3Error

        check_key(key)
        with self._errors(f"delete {key!r}"):
            try:
                self._client.remove_object(self.bucket, key)
            except S3Error as exc:
                if exc.code not in _MISSING_OBJECT_CODES:
                    raise

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        _check_list_prefix(prefix)
        with self._errors(f"list {prefix!r}"):
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield ObjectInfo(
                    key=obj.object_name,
                    size=obj.size or 0,
                    last_modified=_utc(obj.last_modified),
                    content_type=obj.content_type,
                )

    def presigned_url(self, key: str, expires: timedelta) -> str:
        check_key(key)
        _check_expires(expires)
        with self._errors(f"sign a URL for {key!r}"):
            return self._client.presigned_get_object(self.bucket, key, expires=expires)


class _ResponseReader(io.RawIOBase):
    """An S3 GET body as a raw stream whose network errors arrive as StorageError."""

    def __init__(self, response: BaseHTTPResponse, owner: S3Storage, action: str) -> None:
        super().__init__()
        self._response = response
        self._owner = owner
        self._action = action

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        from urllib3.exceptions import HTTPError

        view = memoryview(buffer).cast("B")
        try:
            data = self._response.read(len(view))
        except HTTPError as exc:
            raise self._owner._network_error(exc, self._action) from exc
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        # RawIOBase would loop over 8 KiB reads; urllib3 reads the rest in one go.
        from urllib3.exceptions import HTTPError

        try:
            return self._response.read()
        except HTTPError as exc:
            raise self._owner._network_error(exc, self._action) from exc

    def close(self) -> None:
        if not self.closed:
            # Return the connection to the pool only once the body is done with.
            self._response.close()
            self._response.release_conn()
        super().close()


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return _EPOCH
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# --------------------------------------------------------------------------- local folder


class LocalStorage(Storage):
    """A folder on this machine; each key is a file below it, written atomically."""

    def __init__(self, root: Path) -> None:
        # Absolute but not resolved: messages show the folder as configured.
        self.root = Path(os.path.abspath(Path(root).expanduser()))

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r})"

    def describe(self) -> str:
        return f"local folder {self.root}"

    # -- paths and errors ------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        check_key(key)
        path = self.root / key
        # check_key already refuses '..'; this catches symlinks inside the folder that
        # point elsewhere.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise StorageError(
                f"refusing object key {_shown(key)}: it resolves outside {self.describe()}",
                hint=f"Remove the symlink below {self.root} that points elsewhere.",
            )
        return path

    def _check_root(self) -> None:
        try:
            mode = os.stat(self.root).st_mode
        except FileNotFoundError:
            raise StorageError(
                f"{self.describe()} does not exist",
                hint=f"Create it (mkdir -p {self.root}) or choose another folder; see "
                "`imagen4ctl check-config`.",
            ) from None
        except NotADirectoryError:
            raise StorageError(
                f"{self.describe()} cannot exist: part of its path is a file",
                hint="Choose another folder; see `imagen4ctl check-config`.",
            ) from None
        except OSError as exc:
            raise self._os_error(exc, f"open {self.describe()}") from exc
        if not stat_mode.S_ISDIR(mode):
            raise StorageError(
                f"{self.describe()} is a file, not a folder",
                hint="Choose a folder; see `imagen4ctl check-config`.",
            )

    def _os_error(self, exc: OSError, action: str) -> StorageError:
        fix = f"Make {self.root} writable for this user or choose another folder."
        if exc.errno in (errno.EACCES, errno.EPERM):
            return StorageError(f"cannot {action}: permission denied", hint=fix)
        if exc.errno == errno.EROFS:
            return StorageError(f"cannot {action}: the file system is read-only", hint=fix)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageError(
                f"cannot {action}: no space left", hint=f"Free disk space below {self.root}."
            )
        if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            return StorageError(
                f"cannot {action}: a file and a folder of the same name collide below {self.root}",
                hint="Move the stray file or folder away.",
            )
        reason = (exc.strerror or type(exc).__name__).lower()
        return StorageError(f"cannot {action}: {reason}", hint=fix)

    # -- operations ----------------------------------------------------------------------

    def bucket_exists(self) -> bool:
        return self.root.is_dir()

    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str, length: int | None = None
    ) -> ObjectInfo:
        path = self._path(key)
        _check_put_args(content_type, length)
        self._check_root()
        action = f"store {key!r} in {self.describe()}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error(exc, action) from exc
        # Same folder as the target so the rename is atomic: readers see all or nothing.
        tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        source = _UploadSource(stream, length, key)
        try:
            with open(tmp, "xb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if source.source_failed:
                raise
            raise self._os_error(exc, action) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        info = self.stat(key)
        if info is None:
            raise StorageError(f"{key!r} vanished from {self.describe()} right after writing")
        return info

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._check_root()
            raise StorageError(
                f"cannot read {key!r}: no such object in {self.describe()}",
                hint="Check the key, and that the local folder is the one the images were "
                "stored in (`imagen4ctl check-config`).",
            ) from None
        except OSError as exc:
            raise self._os_error(exc, f"read {key!r} in {self.describe()}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            return None
        except OSError as exc:
            raise self._os_error(exc, f"look up {key!r} in {self.describe()}") from exc
        if not stat_mode.S_ISREG(st.st_mode):
            return None
        return self._info(key, st)

    @staticmethod
    def _info(key: str, st: os.stat_result) -> ObjectInfo:
        # A folder keeps no content type; the extension is what the writer chose it from.
        return ObjectInfo(
            key=key,
            size=st.st_size,
            last_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            content_type=mimetypes.guess_type(key, strict=False)[0],
        )

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
        except IsADirectoryError:
            pass  # a folder is not an object: nothing to delete under this key
        except OSError as exc:
            raise self._os_error(exc, f"delete {key!r} in {self.describe()}") from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        _check_list_prefix(prefix)
        self._check_root()
        folder, _, name_start = prefix.rpartition("/")
        key_base = f"{folder}/" if folder else ""
        directory = self.root / folder if folder else self.root
        if folder and not directory.resolve().is_relative_to(self.root.resolve()):
            return
        yield from self._walk(directory, key_base, name_start)

    def _walk(self, directory: Path, key_base: str, name_start: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as scan:
                entries = [e for e in scan if e.name.startswith(name_start)]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._os_error(exc, f"list {self.describe()}") from exc
        # Sorting folders as "name/" yields keys in the byte order S3 lists them in.
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            if entry.name.startswith(_TMP_PREFIX):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(entry.path), f"{key_base}{entry.name}/", "")
                elif entry.is_file(follow_symlinks=False):
                    yield self._info(key_base + entry.name, entry.stat(follow_symlinks=False))
                # Symlinks are skipped: they could point outside the folder.
            except FileNotFoundError:
                continue  # deleted while listing, as S3 listings may also miss it

    def presigned_url(self, key: str, expires: timedelta) -> str:
        _check_expires(expires)
        # A local file needs no signature; the URI is for the same machine only.
        return self._path(key).as_uri()


def s3_from_settings(settings: Settings, *, timeout: float) -> S3Storage:
    """The bucket the MINIO_* settings name; a missing access key or secret is a ConfigError."""
    endpoint = settings.minio_endpoint
    assert endpoint is not None
    missing = [n for n in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY") if settings.raw(n) is None]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} not set for MINIO_ENDPOINT {endpoint}",
                          hint=f"Set {' and '.join(missing)}, or unset MINIO_ENDPOINT.")
    return S3Storage(endpoint, settings.raw("MINIO_ACCESS_KEY") or "",
                     settings.raw("MINIO_SECRET_KEY") or "", settings.minio_bucket,
                     secure=settings.minio_secure, timeout=timeout)
