"""The folder a gallery is written to: only an earlier gallery there is ever replaced, and
a new one is built beside it and swapped in whole, so no stale image survives and a failure
leaves the old one as it was."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imagen4ctl.errors import Imagen4ctlError, UsageError

MARKER = ".imagen4ctl-gallery"  # only a folder holding it is replaced by a new gallery


def check_target(out: Path) -> Path:
    """The absolute folder a gallery may be written to; refuse to replace anything else."""
    folder = Path(os.path.abspath(out.expanduser()))
    if not folder.name:
        raise UsageError(f"--out {out} cannot be a gallery folder", hint="Choose a new folder.")
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder",
                             hint="Choose a new folder for the gallery.")
        if any(folder.iterdir()) and not (folder / MARKER).exists():
            raise UsageError(f"--out {out} holds files that are not an imagen4ctl gallery",
                             hint="Choose a new folder, or empty that one.")
    return folder


@contextmanager
def building(folder: Path) -> Iterator[Path]:
    work = folder.parent / f".{folder.name}.imagen4ctl-new-{uuid.uuid4().hex[:8]}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
    except OSError as e:
        raise write_error(folder, e) from e
    try:
        yield work
        old = folder.parent / f".{folder.name}.imagen4ctl-old-{uuid.uuid4().hex[:8]}"
        try:
            if folder.exists() or folder.is_symlink():
                folder.rename(old)
            work.rename(folder)
        except OSError as e:
            if old.exists() and not folder.exists():
                old.rename(folder)
            raise write_error(folder, e) from e
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_error(folder: Path, exc: OSError) -> Imagen4ctlError:
    reason = (exc.strerror or type(exc).__name__).lower()
    return Imagen4ctlError(f"cannot write the gallery to {folder}: {reason}",
                           hint="Choose another folder with --out.")
