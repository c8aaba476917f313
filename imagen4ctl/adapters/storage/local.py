"""A folder on this machine as storage: IMAGES_DIR when no bucket is configured."""

from __future__ import annotations

import errno
import mimetypes
import os
import stat as stat_mode
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from imagen4ctl.adapters.storage.base import (
    CHUNK,
    TMP_PREFIX,
    ObjectInfo,
    Storage,
    UploadSource,
    check_expires,
    check_key,
    check_list_prefix,
    check_put_args,
    short_repr,
)
from imagen4ctl.errors import StorageError


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
                f"refusing object key {short_repr(key)}: it resolves outside {self.describe()}",
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

    def create_if_missing(self) -> None:
        """Create the folder and its parents: IMAGES_DIR needs no setup before first use."""
        if self.bucket_exists():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create {self.describe()}: {exc.strerror}",
                hint="Point IMAGES_DIR at a writable folder.",
            ) from exc

    @property
    def links_expire(self) -> bool:
        return False  # a file:// URI is valid as long as the file is there

    def put_stream(
        self, key: str, stream: BinaryIO, *, content_type: str, length: int | None = None
    ) -> ObjectInfo:
        path = self._path(key)
        check_put_args(content_type, length)
        self._check_root()
        action = f"store {key!r} in {self.describe()}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error(exc, action) from exc
        # Same folder as the target so the rename is atomic: readers see all or nothing.
        tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        source = UploadSource(stream, length, key)
        try:
            with open(tmp, "xb") as out:
                while chunk := source.read(CHUNK):
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
        check_list_prefix(prefix)
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
            if entry.name.startswith(TMP_PREFIX):
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
        check_expires(expires)
        # A local file needs no signature; the URI is for the same machine only.
        return self._path(key).as_uri()

