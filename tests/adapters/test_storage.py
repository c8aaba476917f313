from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
import pytest

from imagen4ctl.adapters.storage import (
    PART_SIZE,
    LocalStorage,
    ObjectInfo,
    S3Storage,
    Storage,
)
from imagen4ctl.errors import ConfigError, Imagen4ctlError, StorageError, UsageError
from tests.plugins.s3 import S3Bucket, SeaweedServer

MiB = 1024 * 1024
CREDENTIALS_HINT = "Check MINIO_ACCESS_KEY / MINIO_SECRET_KEY."


class GeneratedStream(io.RawIOBase):
    """`size` deterministic pseudo-random bytes made on demand, never all in memory.

    Hashes what it hands out, so the stored object can be compared without a copy.
    """

    def __init__(self, size: int, *, seed: bytes = b"imagen4ctl", chunk: int = 64 * 1024) -> None:
        super().__init__()
        self._remaining = size
        self._counter = 0
        self._seed = seed
        self._chunk = chunk
        self._pending = b""
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._pending and self._remaining > 0:
            block = hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big"))
            self._counter += 1
            self._pending = block.digest(min(self._chunk, self._remaining))
            self._remaining -= len(self._pending)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self.sha256.update(self._pending[:n])
        self._pending = self._pending[n:]
        return n


class FailingStream(io.RawIOBase):
    """Gives `good` bytes, then fails like a broken download would."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self._good = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._good <= 0:
            raise ConnectionResetError("download broke")
        n = min(len(buffer), self._good)
        buffer[:n] = b"x" * n
        self._good -= n
        return n


def stream_of(raw: io.RawIOBase) -> BinaryIO:
    return io.BufferedReader(raw)


def sha256_of(storage: Storage, key: str) -> str:
    digest = hashlib.sha256()
    with storage.open(key) as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(params=["s3", "local"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        return bucket.storage
    root = tmp_path / "images"
    root.mkdir()
    return LocalStorage(root)


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    root = tmp_path / "images"
    root.mkdir()
    return LocalStorage(root)


# --------------------------------------------------------------------------- both


def test_put_stream_of_unknown_length_round_trips(storage: Storage) -> None:
    size = 2 * PART_SIZE + 123_457  # three multipart parts on S3
    source = GeneratedStream(size)
    before = datetime.now(UTC) - timedelta(seconds=5)

    info = storage.put_stream("generations/u1/1/0.png", stream_of(source), content_type="image/png")

    assert info.key == "generations/u1/1/0.png"
    assert info.size == size
    assert info.content_type == "image/png"
    assert info.last_modified.tzinfo is not None and info.last_modified.utcoffset() == timedelta(0)
    assert before <= info.last_modified <= datetime.now(UTC) + timedelta(seconds=5)
    assert sha256_of(storage, "generations/u1/1/0.png") == source.sha256.hexdigest()


def test_put_stream_holds_at_most_a_few_parts_in_memory(storage: Storage) -> None:
    size = 6 * PART_SIZE
    tracemalloc.start()
    try:
        source = stream_of(GeneratedStream(size))
        storage.put_stream("big/0.webp", source, content_type="image/webp")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    info = storage.stat("big/0.webp")
    assert info is not None
    assert info == ObjectInfo("big/0.webp", size, info.last_modified, "image/webp")
    # One part read from the stream, joined, and minio's copy of it: about 3 parts.
    assert peak < 4 * PART_SIZE, f"peak {peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB upload"


def test_put_with_known_length_and_get(storage: Storage) -> None:
    data = os.urandom(300_000)
    info = storage.put_stream(
        "generations/u1/2/0.jpg", io.BytesIO(data), content_type="image/jpeg", length=len(data)
    )
    assert (info.size, info.content_type) == (len(data), "image/jpeg")
    assert storage.get("generations/u1/2/0.jpg") == data


def test_put_replaces_an_existing_object(storage: Storage) -> None:
    storage.put_bytes("a/0.png", b"old", content_type="image/png")
    storage.put_bytes("a/0.png", b"newer", content_type="image/png")
    assert storage.get("a/0.png") == b"newer"
    assert [o.key for o in storage.list("a/")] == ["a/0.png"]


def test_a_short_stream_stores_nothing(storage: Storage) -> None:
    with pytest.raises(StorageError, match=r"ended after 3 of 10 announced bytes"):
        storage.put_stream("a/0.png", io.BytesIO(b"abc"), content_type="image/png", length=10)
    assert storage.stat("a/0.png") is None


def test_a_failing_source_stream_raises_its_own_error_and_keeps_the_old_object(
    storage: Storage,
) -> None:
    storage.put_bytes("a/0.png", b"old", content_type="image/png")
    with pytest.raises(ConnectionResetError, match="download broke"):
        storage.put_stream(
            "a/0.png", stream_of(FailingStream(PART_SIZE + 5)), content_type="image/png"
        )
    assert storage.get("a/0.png") == b"old"
    assert [o.key for o in storage.list("")] == ["a/0.png"]


def test_stat_list_delete(storage: Storage) -> None:
    for key in [
        "generations/u2/1/0.png",
        "generations/u1/1/1.png",
        "generations/u1/1/0.png",
        "generations/u1-other/5/0.png",
        "other-app/u1/1/0.png",  # the bucket may be shared: never listed under our prefix
    ]:
        storage.put_bytes(key, key.encode(), content_type="image/png")

    # Order is the server's: SeaweedFS walks folders ("u1/" before "u1-other/").
    listed = sorted(storage.list("generations/"), key=lambda o: o.key)
    assert [o.key for o in listed] == [
        "generations/u1-other/5/0.png",
        "generations/u1/1/0.png",
        "generations/u1/1/1.png",
        "generations/u2/1/0.png",
    ]
    assert all(o.size == len(o.key) and o.last_modified.tzinfo is not None for o in listed)
    assert sorted(o.key for o in storage.list("generations/u1/")) == [
        "generations/u1/1/0.png",
        "generations/u1/1/1.png",
    ]
    # A prefix is a string prefix, as in S3, not a folder.
    assert len(list(storage.list("generations/u1"))) == 3
    assert list(storage.list("nothing-here/")) == []

    info = storage.stat("generations/u1/1/0.png")
    assert info is not None and info.size == len("generations/u1/1/0.png")
    assert storage.stat("generations/u1/1/9.png") is None
    assert storage.stat("generations/u1") is None  # a "folder" is not an object

    storage.delete("generations/u1/1/0.png")
    storage.delete("generations/u1/1/0.png")  # missing is fine
    assert storage.stat("generations/u1/1/0.png") is None
    assert [o.key for o in storage.list("generations/u1/")] == ["generations/u1/1/1.png"]


def test_list_streams_lazily(storage: Storage) -> None:
    storage.put_bytes("p/0.png", b"0", content_type="image/png")
    storage.put_bytes("p/1.png", b"1", content_type="image/png")
    listing = storage.list("p/")
    assert isinstance(listing, Iterator)
    assert next(listing).key == "p/0.png"


def test_open_a_missing_object_is_a_storage_error(storage: Storage) -> None:
    with pytest.raises(StorageError, match=r"cannot read 'nope/0\.png': no such object in "):
        storage.get("nope/0.png")


def test_presigned_url_serves_the_bytes(storage: Storage) -> None:
    data = os.urandom(50_000)
    storage.put_bytes("generations/u1/3/0.png", data, content_type="image/png")
    url = storage.presigned_url("generations/u1/3/0.png", timedelta(minutes=5))
    if isinstance(storage, LocalStorage):
        assert url.startswith("file:///")
        fetched = Path(url2pathname(urlsplit(url).path)).read_bytes()
    else:
        response = httpx.get(url, timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        fetched = response.content
    assert fetched == data


@pytest.mark.parametrize("expires", [timedelta(0), timedelta(days=8)])
def test_presigned_url_lifetime_is_bounded(storage: Storage, expires: timedelta) -> None:
    with pytest.raises(UsageError, match="between 1 second and 7 days"):
        storage.presigned_url("a/0.png", expires)


def test_probe_leaves_nothing_behind(storage: Storage) -> None:
    storage.probe("generations/")
    storage.probe()
    assert list(storage.list("")) == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape.png",
        "a/../../escape.png",
        "/etc/passwd",
        "a//b.png",
        "a/./b.png",
        "a\\..\\b.png",
        "nul\0.png",
        "line\nbreak.png",
        "folder/",
        "..",
        "a/.imagen4ctl-tmp-123",
    ],
)
def test_unsafe_keys_are_refused(storage: Storage, key: str) -> None:
    for attempt in (
        lambda: storage.put_bytes(key, b"x", content_type="image/png"),
        lambda: storage.get(key),
        lambda: storage.stat(key),
        lambda: storage.delete(key),
        lambda: storage.presigned_url(key, timedelta(minutes=1)),
    ):
        with pytest.raises(UsageError, match="refusing object key"):
            attempt()


@pytest.mark.parametrize("prefix", ["/", "../", "a/../", "a//", "..", "a\\b"])
def test_unsafe_listing_prefixes_are_refused(storage: Storage, prefix: str) -> None:
    with pytest.raises(UsageError, match="refusing listing prefix"):
        list(storage.list(prefix))


def test_bucket_exists(storage: Storage) -> None:
    assert storage.bucket_exists() is True


def _read_link(url: str) -> bytes | None:
    """What a presigned link serves now, or None once it no longer does."""
    if url.startswith("file:"):
        path = Path(url2pathname(urlsplit(url).path))
        return path.read_bytes() if path.is_file() else None
    response = httpx.get(url, timeout=5)
    return response.content if response.status_code == 200 else None


def test_links_expire_says_whether_a_link_outlives_its_lifetime(storage: Storage) -> None:
    storage.put_bytes("a/0.png", b"png", content_type="image/png")
    url = storage.presigned_url("a/0.png", timedelta(seconds=1))
    assert _read_link(url) == b"png"
    time.sleep(2.5)  # SigV4 counts whole seconds from X-Amz-Date
    assert (_read_link(url) is None) is storage.links_expire


def test_create_if_missing_keeps_an_existing_bucket_as_it_is(storage: Storage) -> None:
    storage.put_bytes("a/0.png", b"kept", content_type="image/png")
    storage.create_if_missing()
    assert storage.bucket_exists() is True
    assert [(o.key, storage.get(o.key)) for o in storage.list("")] == [("a/0.png", b"kept")]


def test_every_backend_must_answer_the_interface_questions() -> None:
    assert {"bucket_exists", "create_if_missing", "links_expire"} <= Storage.__abstractmethods__


# --------------------------------------------------------------------------- local


def test_local_describe_and_repr(local: LocalStorage) -> None:
    assert local.describe() == f"local folder {local.root}"
    assert local.root.is_absolute()
    assert repr(local) == f"LocalStorage(root={str(local.root)!r})"


def test_local_writes_files_below_root_atomically(local: LocalStorage) -> None:
    local.put_bytes("generations/u1/1/0.png", b"png", content_type="image/png")
    assert (local.root / "generations/u1/1/0.png").read_bytes() == b"png"
    assert [p.name for p in (local.root / "generations/u1/1").iterdir()] == ["0.png"]


def test_local_interrupted_write_leaves_no_partial_file(local: LocalStorage) -> None:
    with pytest.raises(ConnectionResetError):
        local.put_stream("a/0.png", stream_of(FailingStream(3 * MiB)), content_type="image/png")
    assert list((local.root / "a").iterdir()) == []


def test_local_symlink_out_of_the_folder_is_refused(local: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (local.root / "link").symlink_to(outside)
    with pytest.raises(StorageError, match="resolves outside local folder"):
        local.put_bytes("link/x.png", b"x", content_type="image/png")
    assert list(outside.iterdir()) == []
    assert list(local.list("")) == []  # symlinks are not followed when listing


def test_local_missing_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "missing")
    assert storage.bucket_exists() is False
    with pytest.raises(StorageError) as caught:
        storage.put_bytes("a/0.png", b"x", content_type="image/png")
    assert str(caught.value) == f"local folder {tmp_path / 'missing'} does not exist"
    assert caught.value.hint is not None and "mkdir -p" in caught.value.hint
    assert not (tmp_path / "missing").exists()
    with pytest.raises(StorageError, match="does not exist"):
        storage.stat("a/0.png")


def test_local_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    storage = LocalStorage(tmp_path / "file")
    assert storage.bucket_exists() is False
    with pytest.raises(StorageError, match="is a file, not a folder"):
        storage.probe()


def test_local_folder_below_a_file_cannot_be_written(tmp_path: Path) -> None:
    # chmod does not stop root, so a regular file in the path stands in for "not writable".
    (tmp_path / "file").write_text("not a folder")
    storage = LocalStorage(tmp_path / "file" / "images")
    with pytest.raises(StorageError) as caught:
        storage.probe()
    assert str(caught.value) == (
        f"local folder {tmp_path / 'file' / 'images'} cannot exist: part of its path is a file"
    )
    assert caught.value.hint is not None and "check-config" in caught.value.hint


def test_local_key_colliding_with_a_file(local: LocalStorage) -> None:
    local.put_bytes("generations", b"a stray file", content_type="image/png")
    with pytest.raises(StorageError, match="a file and a folder of the same name collide"):
        local.put_bytes("generations/u1/1/0.png", b"x", content_type="image/png")


def test_local_content_type_comes_from_the_extension(local: LocalStorage) -> None:
    local.put_bytes("a/0.webp", b"x", content_type="image/webp")
    local.put_bytes("a/noext", b"x", content_type="image/webp")
    assert [o.content_type for o in local.list("a/")] == ["image/webp", None]


def test_local_links_do_not_expire(local: LocalStorage) -> None:
    assert local.links_expire is False


def test_local_create_if_missing_makes_the_folder_and_its_parents(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "new" / "images")
    assert storage.bucket_exists() is False
    storage.create_if_missing()
    assert storage.bucket_exists() is True
    storage.probe()


def test_local_create_if_missing_where_a_file_is(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    for root, reason in [
        (tmp_path / "file", "File exists"),
        (tmp_path / "file" / "images", "Not a directory"),
    ]:
        storage = LocalStorage(root)
        with pytest.raises(StorageError) as caught:
            storage.create_if_missing()
        assert str(caught.value) == f"cannot create local folder {root}: {reason}"
        assert caught.value.hint == "Point IMAGES_DIR at a writable folder."
    assert (tmp_path / "file").read_text() == "not a folder"


# --------------------------------------------------------------------------- S3


def test_s3_describe_and_repr(s3_bucket: S3Bucket) -> None:
    storage = s3_bucket.storage
    endpoint = s3_bucket.server.endpoint
    assert storage.describe() == f"s3://{s3_bucket.name} at {endpoint}"
    assert repr(storage) == (
        f"S3Storage(endpoint={endpoint!r}, bucket={s3_bucket.name!r}, "
        f"access_key={s3_bucket.server.access_key!r}, secure=False)"
    )


def test_s3_server_refuses_a_wrong_secret_itself(s3_server: SeaweedServer) -> None:
    # Guards the fixture: without enforced auth the credential tests below prove nothing.
    from minio import Minio
    from minio.error import S3Error

    client = Minio(s3_server.endpoint, s3_server.access_key, "wrong-secret", secure=False)
    with pytest.raises(S3Error) as caught:
        client.list_buckets()
    assert caught.value.code == "SignatureDoesNotMatch"
    anonymous = Minio(s3_server.endpoint, secure=False)
    with pytest.raises(S3Error, match="AccessDenied"):
        anonymous.list_buckets()


@pytest.mark.parametrize("which", ["secret", "access key"])
def test_s3_wrong_credentials_fail_fast_with_the_credentials_hint(
    s3_bucket: S3Bucket, which: str
) -> None:
    server = s3_bucket.server
    storage = S3Storage(
        server.endpoint,
        "nobody" if which == "access key" else server.access_key,
        "wrong-secret" if which == "secret" else server.secret_key,
        s3_bucket.name,
        timeout=5.0,
    )
    for attempt in (
        storage.bucket_exists,
        storage.probe,
        lambda: storage.stat("a/0.png"),
        lambda: list(storage.list("generations/")),
    ):
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            attempt()
        assert time.monotonic() - started < 6.0
        assert caught.value.hint is not None and caught.value.hint.startswith(CREDENTIALS_HINT)
        assert server.endpoint in str(caught.value)


def test_s3_links_expire(s3_bucket: S3Bucket) -> None:
    assert s3_bucket.storage.links_expire is True


def test_s3_create_if_missing_never_creates_a_bucket(s3_server: SeaweedServer) -> None:
    s3_server.ensure_running()
    storage = s3_server.storage("not-created-here")
    storage.create_if_missing()
    assert storage.bucket_exists() is False
    assert not s3_server.admin_client().bucket_exists("not-created-here")


def test_s3_create_if_missing_asks_nothing_of_the_server() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    storage = S3Storage(f"127.0.0.1:{port}", "key", "secret", "bucket", timeout=0.3)
    storage.create_if_missing()  # nothing listens there: any request would raise
    with pytest.raises(StorageError, match="connection refused"):
        storage.bucket_exists()


def test_s3_missing_bucket_is_named(s3_server: SeaweedServer) -> None:
    s3_server.ensure_running()
    storage = s3_server.storage("no-such-bucket-here")
    assert storage.bucket_exists() is False
    for attempt in (
        storage.probe,
        lambda: storage.stat("a/0.png"),
        lambda: storage.get("a/0.png"),
        lambda: storage.delete("a/0.png"),
        lambda: list(storage.list("generations/")),
    ):
        with pytest.raises(StorageError) as caught:
            attempt()
        assert str(caught.value) == (
            f"bucket 'no-such-bucket-here' does not exist at {s3_server.endpoint}"
        )
        assert caught.value.hint == (
            "Create bucket 'no-such-bucket-here' or set MINIO_BUCKET to an existing bucket."
        )


def test_s3_stopped_server_fails_within_seconds_and_recovers(
    s3_server_private: SeaweedServer,
) -> None:
    server = s3_server_private
    storage = server.storage("survivor-bucket", timeout=5.0)
    server.admin_client().make_bucket("survivor-bucket")
    storage.put_bytes("a/0.png", b"before", content_type="image/png")

    server.stop()
    for attempt in (
        storage.bucket_exists,
        storage.probe,
        lambda: storage.get("a/0.png"),
        lambda: list(storage.list("a/")),
        lambda: storage.put_stream(
            "a/1.png", stream_of(GeneratedStream(3 * MiB)), content_type="image/png"
        ),
    ):
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            attempt()
        assert time.monotonic() - started < 3.0
        assert str(caught.value) == (
            f"cannot reach the S3 server at {server.endpoint}: connection refused"
        )
        assert caught.value.hint == (
            "Is the server at MINIO_ENDPOINT running? Start it or fix MINIO_ENDPOINT."
        )

    # The same storage object works again once the server is back (no poisoned pool).
    server.start()
    assert storage.get("a/0.png") == b"before"


def test_seaweed_restart_accepts_a_sentinel_whose_write_went_unanswered(
    s3_server_private: SeaweedServer,
) -> None:
    # The test server's readiness check writes a sentinel object and reads it back after a
    # restart. Under load the write can time out on the client after the server stored it:
    # that value must pass the check, or the restart waits out its whole timeout.
    server = s3_server_private
    admin = server.admin_client()

    class Unanswered:
        """The server's client, whose writes are stored but never answered."""

        def __getattr__(self, name: str) -> Any:
            return getattr(admin, name)

        def put_object(self, *args: Any, **kwargs: Any) -> Any:
            admin.put_object(*args, **kwargs)
            raise TimeoutError("read timed out")

    with pytest.raises(TimeoutError):
        server._check_ready(Unanswered())  # type: ignore[arg-type]
    server.stop()
    server.start(timeout=20.0)
    assert server.running


def test_s3_hung_server_times_out(tmp_path: Path) -> None:
    # Accepts connections (the kernel backlog does) but never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        storage = S3Storage(f"127.0.0.1:{port}", "key", "secret", "bucket", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            storage.bucket_exists()
        elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert str(caught.value) == (
        f"the S3 server at 127.0.0.1:{port} did not answer within 0.9s while trying to "
        "check bucket 'bucket'"
    )


def test_s3_endpoint_that_is_not_s3(s3_server: SeaweedServer) -> None:
    s3_server.ensure_running()
    storage = S3Storage(
        f"127.0.0.1:{s3_server.ports['master']}",
        s3_server.access_key,
        s3_server.secret_key,
        "bucket",
        region="us-east-1",
    )
    with pytest.raises(StorageError) as caught:
        list(storage.list("generations/"))
    assert caught.value.hint is not None and "MINIO_ENDPOINT" in caught.value.hint


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:9000",
        "https://s3.example.com",
        "127.0.0.1:9000/bucket",
        "",
        " 127.0.0.1:9000",
        "host:port",
        "host:70000",
        "host:0",
        "user:pw@host:9000",
        ":9000",
    ],
)
def test_s3_bad_endpoints_are_config_errors(endpoint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        S3Storage(endpoint, "key", "secret", "bucket")
    assert str(caught.value).startswith(f"invalid S3 endpoint {endpoint!r}: ")
    assert caught.value.hint is not None and "MINIO_ENDPOINT" in caught.value.hint


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.1:9000", "minio", "s3.example.com:443", "[::1]:9000"]
)
def test_s3_good_endpoints(endpoint: str) -> None:
    assert S3Storage(endpoint, "key", "secret", "bucket").endpoint == endpoint


@pytest.mark.parametrize("bucket", ["", "ab", "Upper", "under_score", "a" * 64, "1.2.3.4"])
def test_s3_bad_bucket_names_are_config_errors(bucket: str) -> None:
    with pytest.raises(ConfigError, match="invalid bucket name") as caught:
        S3Storage("127.0.0.1:9000", "key", "secret", bucket)
    assert caught.value.hint is not None and "MINIO_BUCKET" in caught.value.hint


def test_s3_half_a_key_pair_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="MINIO_SECRET_KEY is empty"):
        S3Storage("127.0.0.1:9000", "key", "", "bucket")
    with pytest.raises(ConfigError, match="MINIO_ACCESS_KEY is empty"):
        S3Storage("127.0.0.1:9000", "", "secret", "bucket")


def test_importing_the_module_does_not_import_minio() -> None:
    code = (
        "import sys, imagen4ctl.adapters.storage\n"
        "assert 'minio' not in sys.modules and 'urllib3' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- secrets

CANARY = "Canary-Secret-9f2c7d41e8b3a650-DoNotPrint"


def _pieces(secret: str, width: int = 8) -> set[str]:
    return {secret[i : i + width] for i in range(len(secret) - width + 1)}


def _texts_of(error: Imagen4ctlError) -> list[str]:
    texts = [str(error), error.message, error.hint or "", repr(error)]
    cause = error.__cause__
    while cause is not None:
        texts += [str(cause), repr(cause)]
        cause = cause.__cause__
    return texts


def test_the_secret_key_never_shows(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    server = s3_bucket.server
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    dead_port = listener.getsockname()[1]
    listener.close()  # nothing listens there any more: connection refused
    storages = [
        S3Storage(server.endpoint, server.access_key, CANARY, s3_bucket.name, timeout=2),
        S3Storage(server.endpoint, server.access_key, CANARY, "missing-bucket", timeout=2),
        S3Storage(f"127.0.0.1:{dead_port}", server.access_key, CANARY, "bucket", timeout=2),
    ]
    texts: list[str] = []
    for storage in storages:
        texts += [repr(storage), str(storage), storage.describe()]
        for attempt in (
            storage.probe,
            storage.bucket_exists,
            lambda s=storage: s.presigned_url("a/0.png", timedelta(minutes=1)),
        ):
            try:
                attempt()
            except Imagen4ctlError as error:
                texts += _texts_of(error)
    for bad in ("http://x:1", "x:1/path"):
        with pytest.raises(ConfigError) as caught:
            S3Storage(bad, "key", CANARY, "bucket")
        texts += _texts_of(caught.value)

    assert len(texts) > 20
    leaks = {piece for piece in _pieces(CANARY) for text in texts if piece in text}
    assert not leaks, f"secret pieces shown: {sorted(leaks)}"


def test_s3_tls_against_a_plain_http_server(s3_server: SeaweedServer) -> None:
    s3_server.ensure_running()
    storage = S3Storage(
        s3_server.endpoint, s3_server.access_key, s3_server.secret_key, "bucket", secure=True
    )
    assert storage.describe() == f"s3://bucket at {s3_server.endpoint} (TLS)"
    with pytest.raises(StorageError) as caught:
        storage.bucket_exists()
    assert str(caught.value) == (
        f"TLS with the S3 server at {s3_server.endpoint} failed while trying to check bucket "
        "'bucket'"
    )


def test_s3_get_reads_a_large_object_whole(s3_bucket: S3Bucket) -> None:
    data = os.urandom(5 * MiB + 1)
    s3_bucket.storage.put_bytes("big.png", data, content_type="image/png")
    with s3_bucket.storage.open("big.png") as stream:
        assert stream.read(10) == data[:10]
        assert stream.read() == data[10:]
    assert s3_bucket.storage.get("big.png") == data
