"""Content hashes (blake3) that identify a model whatever its file name or location."""

from __future__ import annotations

from pathlib import Path

import blake3


def hash_file(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(str(path))
    return "blake3:" + h.hexdigest()


def hash_files(files: list[Path], relative_to: Path | None = None) -> str:
    """Hash of each file's name (relative path) and content, in the given order."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for file in files:
        name = file.relative_to(relative_to).as_posix() if relative_to else file.name
        h.update(name.encode() + b"\0")
        h.update_mmap(str(file))
    return "blake3:" + h.hexdigest()


def hash_folder(folder: Path) -> str:
    """Hash of every file's relative path and content, in sorted order."""
    return hash_files(sorted(p for p in folder.rglob("*") if p.is_file()), relative_to=folder)
