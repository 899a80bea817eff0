"""Content hashes (blake3) that identify a model whatever its file name or location.

Files are read into bounded buffers, never memory-mapped: a mapped file that shrinks while it
is hashed (a `cp` over a drop-folder file) kills the whole process with SIGBUS, while a short
read is an error for that file only. The next chunk is read in a thread while the current one
is hashed (both release the GIL), which keeps close to the speed of the mapped hash.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3

from loraworks.models.errors import ModelError
from loraworks.models.progress import CHUNK_BYTES, ByteCounter, ProgressCallback


def hash_file(path: Path, progress: ProgressCallback | None = None) -> str:
    """Hash of the file's content."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    _feed(hasher, path, path.name, ByteCounter(progress, "hash", path.stat().st_size))
    return "blake3:" + hasher.hexdigest()


def hash_files(
    files: list[Path], relative_to: Path | None = None, progress: ProgressCallback | None = None
) -> str:
    """Hash of each file's name (relative path) and content, in the given order."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    counter = ByteCounter(progress, "hash", sum(file.stat().st_size for file in files))
    for file in files:
        name = file.relative_to(relative_to).as_posix() if relative_to else file.name
        hasher.update(name.encode() + b"\0")
        _feed(hasher, file, name, counter)
    return "blake3:" + hasher.hexdigest()


def hash_folder(folder: Path, progress: ProgressCallback | None = None) -> str:
    """Hash of every file's relative path and content, in sorted order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hash_files(files, relative_to=folder, progress=progress)


def _feed(hasher: blake3.blake3, path: Path, name: str, counter: ByteCounter) -> None:
    """Hash the file's bytes; a file that changed meanwhile (fewer or more bytes read than it
    held at the start, or a new mtime) is a `ModelError`: the digest would be of bytes that
    never existed together."""
    with path.open("rb", buffering=0) as file:
        start = os.fstat(file.fileno())
        # two buffers: one is hashed while the other is read
        size = max(1, min(CHUNK_BYTES, start.st_size))
        buffers = (bytearray(size), bytearray(size))
        read = 0
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(file.readinto, buffers[0])
            turn = 0
            while count := pending.result():
                current = memoryview(buffers[turn])[:count]
                turn = 1 - turn
                pending = reader.submit(file.readinto, buffers[turn])
                hasher.update(current)
                read += count
                counter.add(count, name)
        end = os.fstat(file.fileno())
    if read != start.st_size or end.st_mtime_ns != start.st_mtime_ns:
        raise ModelError(
            f"{name}: the file changed while it was read ({start.st_size} bytes at the start, "
            f"{read} read; still being written?)"
        )
