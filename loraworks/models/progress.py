"""Install progress: the typed events `ModelManager.install(progress=…)` reports, and the byte
counter the download, hash and copy loops report through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

#: Files are read in chunks of this size: one progress event each, and the most memory one
#: read holds (8 MiB hashes close to the speed of a memory-mapped file: docs/models.md).
CHUNK_BYTES = 8 << 20

Stage = Literal["download", "hash", "copy", "probe"]


@dataclass(frozen=True)
class InstallProgress:
    """Where an install is: `done` of `total` bytes (None: not known) of a stage, in `name`
    (the file being read or written; totals cover every file of the stage)."""

    stage: Stage
    done: int
    total: int | None
    name: str


ProgressCallback = Callable[[InstallProgress], object]


@dataclass
class ByteCounter:
    """Bytes done in one stage; each step goes to the callback (none: counting only). A
    callback that raises stops the install, which then leaves nothing behind."""

    callback: ProgressCallback | None
    stage: Stage
    total: int | None
    done: int = 0

    def add(self, count: int, name: str) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(InstallProgress(self.stage, self.done, self.total, name))
