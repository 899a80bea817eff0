"""An install's overall deadline, size cap and cancel switch.

Per-read timeouts do not bound an install: a server sending one byte every 10 s never trips a
30 s read timeout. So every install carries one `InstallGuard`, which the download, hash and
copy loops consult through the progress callback they already call after each chunk; when it
raises, the install stops and leaves nothing behind (the same path as a raising callback).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from loraworks.models.errors import ModelError
from loraworks.models.progress import InstallProgress, ProgressCallback


class InstallCancelled(ModelError):
    """Whoever started the install cancelled it (a request whose client went away)."""


class InstallTimedOut(ModelError):
    """The install ran past `limits.install_timeout_s`."""

    @classmethod
    def after(cls, timeout_s: float) -> InstallTimedOut:
        return cls(
            f"the install took longer than {timeout_s:g} s (limits.install_timeout_s in "
            "config.toml) and was abandoned"
        )


class InstallTooLarge(ModelError):
    """The source is larger than `limits.max_install_gb`."""


@dataclass
class InstallGuard:
    """Checked after every chunk an install reads, writes or downloads."""

    timeout_s: float
    max_bytes: int
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: ProgressCallback | None = None
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.timeout_s - (time.monotonic() - self.started)

    def check(self) -> None:
        if self.cancel.is_set():
            raise InstallCancelled("the install was cancelled")
        if self.remaining() <= 0:
            raise InstallTimedOut.after(self.timeout_s)

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            raise InstallTooLarge(
                f"{what} is {size / 2**30:.2f} GiB, over the {self.max_bytes / 2**30:g} GiB "
                "limit (limits.max_install_gb in config.toml)"
            )

    def __call__(self, event: InstallProgress) -> None:
        """The progress callback the install loops call: checks, then passes the event on."""
        self.check()
        if event.stage == "download":
            self.check_size(max(event.done, event.total or 0), event.name)
        if self.progress is not None:
            self.progress(event)
