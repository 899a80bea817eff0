"""Content hashes (blake3) that identify a model whatever its file name or location.

`digest_file` also computes, in the same read, the SHA-256 digests other tools identify models
by (A1111 and Civitai: the whole file, and a safetensors file's bytes after its header; see
`autohashes.py`).

Files are read into bounded buffers, never memory-mapped: a mapped file that shrinks while it
is hashed (a `cp` over a drop-folder file) kills the whole process with SIGBUS, while a short
read is an error for that file only. The next chunk is read in a thread while the current one
is hashed (both release the GIL), which keeps close to the speed of the mapped hash.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3

from loraworks.models.errors import ModelError
from loraworks.models.progress import CHUNK_BYTES, ByteCounter, ProgressCallback


class _Sink(Protocol):
    def update(self, data: memoryview, /) -> object: ...


@dataclass(frozen=True)
class FileDigests:
    """What one read of a file gives: the content hash and, when asked for, SHA-256 digests."""

    content: str  # "blake3:<hex>", the hash records are identified by
    sha256: str | None = None  # of the whole file
    #: of a safetensors file's bytes after its header (A1111's `addnet_hash_safetensors`):
    #: the same when only the header's metadata changes
    after_header: str | None = None


class _AfterHeader:
    """SHA-256 of the bytes after the first `skip` (a safetensors file's 8 + header bytes)."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.hasher = hashlib.sha256()

    def update(self, data: memoryview) -> None:
        if self.skip >= len(data):
            self.skip -= len(data)
            return
        self.hasher.update(data[self.skip :])
        self.skip = 0


def _header_end(path: Path) -> int | None:
    """Where a safetensors file's tensor bytes start (8 + the header length it declares)."""
    with path.open("rb") as file:
        head = file.read(8)
    return 8 + int.from_bytes(head, "little") if len(head) == 8 else None


def digest_file(
    path: Path,
    progress: ProgressCallback | None = None,
    *,
    sha256: bool = False,
    after_header: bool = False,
) -> FileDigests:
    """The content hash and, in the same read, the SHA-256 of the whole file (`sha256`) and of
    a safetensors file's bytes after its header (`after_header`; None when the file is
    shorter than the 8 bytes that give the header's length)."""
    content = blake3.blake3(max_threads=blake3.blake3.AUTO)
    whole = hashlib.sha256() if sha256 else None
    skip = _header_end(path) if after_header else None
    tail = _AfterHeader(skip) if skip is not None else None
    sinks: list[_Sink] = [s for s in (content, whole, tail) if s is not None]
    _feed(sinks, path, path.name, ByteCounter(progress, "hash", path.stat().st_size))
    return FileDigests(
        content="blake3:" + content.hexdigest(),
        sha256=whole.hexdigest() if whole else None,
        after_header=tail.hasher.hexdigest() if tail else None,
    )


def hash_file(path: Path, progress: ProgressCallback | None = None) -> str:
    """Hash of the file's content."""
    return digest_file(path, progress).content


def hash_files(
    files: list[Path], relative_to: Path | None = None, progress: ProgressCallback | None = None
) -> str:
    """Hash of each file's name (relative path) and content, in the given order."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    counter = ByteCounter(progress, "hash", sum(file.stat().st_size for file in files))
    for file in files:
        name = file.relative_to(relative_to).as_posix() if relative_to else file.name
        hasher.update(name.encode() + b"\0")
        _feed([hasher], file, name, counter)
    return "blake3:" + hasher.hexdigest()


def hash_folder(folder: Path, progress: ProgressCallback | None = None) -> str:
    """Hash of every file's relative path and content, in sorted order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hash_files(files, relative_to=folder, progress=progress)


def _feed(hashers: list[_Sink], path: Path, name: str, counter: ByteCounter) -> None:
    """Hash the file's bytes with each of `hashers`; a file that changed meanwhile (fewer or
    more bytes read than it held at the start, or a new mtime) is a `ModelError`: the digest
    would be of bytes that never existed together."""
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
                for hasher in hashers:
                    hasher.update(current)
                read += count
                counter.add(count, name)
        end = os.fstat(file.fileno())
    if read != start.st_size or end.st_mtime_ns != start.st_mtime_ns:
        raise ModelError(
            f"{name}: the file changed while it was read ({start.st_size} bytes at the start, "
            f"{read} read; still being written?)"
        )
