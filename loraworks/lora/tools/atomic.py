"""Outputs appear whole or not at all: written under a temporary name beside the target (same
file system), then renamed over it (`os.replace`, atomic on POSIX). A failure midway removes
the temporary file or folder; an existing target is refused unless ``force``."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LoRAToolError, OutputExists


def check_output(path: Path, force: bool, suffix: str | None = None) -> None:
    """Refuse an existing output (before any work is done) unless ``force``, and one not named
    ``*suffix`` when a suffix is required."""
    if suffix is not None and path.suffix != suffix:
        raise LoRAToolError(f"{path}: this output is written as NAME{suffix}")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExists(f"{path} exists; pass --force (force=True) to replace it")
    if not path.parent.is_dir():
        raise LoRAToolError(f"{path.parent}: no such folder")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """A temporary path to write to; renamed to ``path`` when the block succeeds."""
    path = Path(path)
    check_output(path, force)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise LoRAToolError(f"nothing was written for {path}")
        if tmp.is_dir() and path.exists():
            # a folder cannot be renamed over a folder: move the old one aside first
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
