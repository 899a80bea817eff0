"""Content hashes (blake3) that identify a model whatever its file name or location."""

from __future__ import annotations

from pathlib import Path

import blake3


def hash_file(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(str(path))
    return "blake3:" + h.hexdigest()


def hash_folder(folder: Path) -> str:
    """Hash of every file's relative path and content, in sorted order."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(folder).as_posix()).encode() + b"\0")
        h.update_mmap(str(file))
    return "blake3:" + h.hexdigest()
