"""Sidecar files (`<name>.json`, `.txt`, preview images) as the product may read, serve or copy
them: regular files in the folder they are named in.

A sidecar is a name next to a model, chosen by whoever wrote the folder, so it is checked
before anything reads it: a link to a file elsewhere (`x.txt → ~/.ssh/id_rsa`,
`x.png → /etc/passwd`) would put that file in a record, the API or `models/`; a FIFO would
block the reader; `/proc` files claim size 0 and hold anything. A link to a file in the same
folder is fine.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: a preview larger than this is not served or copied
MAX_PREVIEW_BYTES = 32 * 1024 * 1024


def usable(path: Path, max_bytes: int) -> bool:
    """Whether `path` is a non-empty regular file of at most `max_bytes` in its own folder."""
    try:
        real = path.resolve(strict=True)
        info = real.stat()
    except (OSError, RuntimeError):
        return False
    return (
        real.parent == path.parent.resolve()
        and stat.S_ISREG(info.st_mode)
        and 0 < info.st_size <= max_bytes
    )


def read(path: Path, max_bytes: int) -> bytes | None:
    """The sidecar's bytes, or None when it is not `usable` or reads other than its size says
    (a special file, or one being rewritten)."""
    if not usable(path, max_bytes):
        return None
    try:
        fd = os.open(path.resolve(), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        data = f.read(max_bytes + 1)
    return data if len(data) == info.st_size else None
