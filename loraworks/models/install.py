"""Atomic copies into `models/`: copy to a temporary name, fsync, rename, and only then write
the record (the caller does that in one transaction).

A crash at any point leaves either nothing, a `.tmp-*` entry, or a complete folder without a
record; `clean_leftovers` removes the last two on the next open. An advisory lock keeps that
cleanup away from installs still running in another process. Files are copied chunk by chunk,
so that the bytes copied can be reported.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from loraworks.models.errors import ModelError
from loraworks.models.progress import CHUNK_BYTES, ByteCounter, ProgressCallback

TMP_PREFIX = ".tmp-"
_KEY = re.compile(r"[0-9a-f]{32}")
# Test hook for the crash-safety tests: "<stage>:<seconds>" sleeps at that stage
# ("before-rename" or "after-rename") so a test can kill the process there.
PAUSE_ENV = "LORAWORKS_TEST_INSTALL_PAUSE"
#: diffusers pipelines nest 2 deep; more than this is not a model folder
MAX_COPY_DEPTH = 16


def _pause_at(stage: str) -> None:
    wanted, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted == stage:
        import time

        time.sleep(float(seconds))


@contextmanager
def install_lock(lock_file: Path, exclusive: bool, wait: bool = True) -> Iterator[bool]:
    """Shared for installs (several may run), exclusive for cleanup; yields whether it holds."""
    lock_file.touch(exist_ok=True)
    with lock_file.open("r") as f:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(f, flags | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checked(path: Path, depth: int) -> Path:
    """`path` if the copy may read it (see the module docstring), else a `ModelError`."""
    if depth > MAX_COPY_DEPTH:
        raise ModelError(f"{path}: folders nested more than {MAX_COPY_DEPTH} deep; not copied")
    if path.is_symlink() and path.is_dir():
        raise ModelError(
            f"{path}: a link to a folder inside a model folder (a loop, or files from "
            "elsewhere); not copied"
        )
    if not path.is_dir() and not path.is_file():
        raise ModelError(f"{path}: not a regular file (a FIFO, socket or device); not copied")
    return path


def _size(path: Path, depth: int = 0) -> int:
    """Bytes `_copy_synced` copies from `path` (it walks folders the same way)."""
    if _checked(path, depth).is_dir():
        return sum(_size(child, depth + 1) for child in path.iterdir())
    return path.stat().st_size


def _by_kernel(source: BinaryIO, target: BinaryIO) -> int:
    return os.sendfile(target.fileno(), source.fileno(), None, CHUNK_BYTES)


def _through_python(source: BinaryIO, target: BinaryIO) -> int:
    chunk = source.read(CHUNK_BYTES)
    target.write(chunk)
    return len(chunk)


# Linux sends file to file in the kernel (as shutil.copyfile does): a third of the time of
# copying through Python when the source is cached. Elsewhere sendfile wants a socket.
_copy_chunk = _by_kernel if sys.platform == "linux" else _through_python


def _copy_file(src: Path, dst: Path, counter: ByteCounter) -> None:
    with src.open("rb") as source, dst.open("wb") as target:
        while count := _copy_chunk(source, target):
            counter.add(count, src.name)


def _copy_synced(src: Path, dst: Path, counter: ByteCounter, depth: int = 0) -> None:
    if _checked(src, depth).is_dir():
        dst.mkdir()
        for child in sorted(src.iterdir()):
            _copy_synced(child, dst / child.name, counter, depth + 1)
        _fsync_path(dst)
    else:
        _copy_file(src, dst, counter)
        _fsync_path(dst)


def copy_into(
    models_dir: Path,
    key: str,
    source: Path,
    file_name: str,
    extras: dict[str, Path],
    progress: ProgressCallback | None = None,
) -> Path:
    """Copy `source` (file or folder) to `models/<key>/<file_name>` atomically, with `extras`
    (e.g. the preview image) beside it under the given names; return the copied path."""
    tmp = models_dir / f"{TMP_PREFIX}{key}"
    final = models_dir / key
    counter = ByteCounter(progress, "copy", sum(_size(p) for p in (source, *extras.values())))
    tmp.mkdir()
    try:
        _copy_synced(source, tmp / file_name, counter)
        for extra_name, extra in extras.items():
            _copy_synced(extra, tmp / extra_name, counter)
        _fsync_path(tmp)
        _pause_at("before-rename")
        os.replace(tmp, final)
        _fsync_path(models_dir)
        _pause_at("after-rename")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / file_name


def discard(models_dir: Path, key: str) -> None:
    """Remove a copied model's folder (after its record is gone or was never written)."""
    target = models_dir / key
    if target.parent == models_dir and target.exists():
        shutil.rmtree(target, ignore_errors=True)


def clean_leftovers(models_dir: Path, known_keys: set[str]) -> list[Path]:
    """Delete temporary copies and complete copies that no record points to."""
    removed = []
    for entry in models_dir.iterdir():
        orphan = bool(_KEY.fullmatch(entry.name)) and entry.name not in known_keys
        if entry.name.startswith(TMP_PREFIX) or orphan:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
