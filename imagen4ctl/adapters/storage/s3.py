"""A bucket on an S3 server (MinIO, SeaweedFS, AWS), through the `minio` client.

The only module that talks to `minio`/`urllib3`; they are imported inside functions so
that `imagen4ctl --help` never pays for them. Every failure leaves as a `StorageError`
whose one-line message and hint say what to fix; secrets never appear.
"""

from __future__ import annotations

import io
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO, cast
from urllib.parse import urlsplit

from imagen4ctl.adapters.storage.base import (
    CHUNK,
    ObjectInfo,
    Storage,
    UploadSource,
    check_expires,
    check_key,
    check_list_prefix,
    check_put_args,
    short_repr,
)
from imagen4ctl.errors import ConfigError, StorageError

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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_CREDENTIAL_CODES = frozenset(
    {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}
)
_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "NoSuchObject"})


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
            f"invalid S3 endpoint {short_repr(endpoint)}: {problem}",
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
            f"invalid bucket name {short_repr(str(bucket))}",
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
                f"invalid S3 endpoint {short_repr(endpoint)}",
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

    def create_if_missing(self) -> None:
        """Nothing: a bucket's region and policies are its administrator's choice."""

    @property
    def links_expire(self) -> bool:
        return True  # a signed URL carries its own expiry

    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str, length: int | None = None
    ) -> ObjectInfo:
        check_key(key)
        check_put_args(content_type, length)
        source = UploadSource(stream, length, key)
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
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=CHUNK))

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
        check_list_prefix(prefix)
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
        check_expires(expires)
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
