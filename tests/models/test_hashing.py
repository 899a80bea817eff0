"""Content hashes read in chunks: the same digests as before (records stay valid), and a file
that changes while it is read is an error for that file, not a crash."""

from __future__ import annotations

import os

import blake3
import pytest

from loraworks.models import ModelError
from loraworks.models.hashing import hash_file, hash_files, hash_folder

CHUNK = 4096


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr("loraworks.models.hashing.CHUNK_BYTES", CHUNK)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7])
def test_file_hash_is_blake3_of_its_bytes(tmp_path, small_chunks, size):
    path = tmp_path / "x.safetensors"
    path.write_bytes(os.urandom(size))
    assert hash_file(path) == "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()


def test_file_hash_with_the_real_chunk_size(tmp_path):
    """Two 8 MiB chunks and a tail: the buffers are reused without mixing their bytes."""
    path = tmp_path / "x.safetensors"
    path.write_bytes(os.urandom((16 << 20) + 3))
    assert hash_file(path) == "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()


def _names_and_contents(files, names) -> str:
    """The scheme records were made with: each name, a NUL, then the file's bytes."""
    h = blake3.blake3()
    for file, name in zip(files, names, strict=True):
        h.update(name.encode() + b"\0" + file.read_bytes())
    return "blake3:" + h.hexdigest()


def test_folder_and_file_list_hashes_keep_their_scheme(tmp_path, small_chunks):
    folder = tmp_path / "pipe"
    for name, size in [("model_index.json", 40), ("unet/w.bin", 3 * CHUNK + 1), ("vae/c", 0)]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(os.urandom(size))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = [p.relative_to(folder).as_posix() for p in files]
    assert names == ["model_index.json", "unet/w.bin", "vae/c"]
    assert hash_folder(folder) == _names_and_contents(files, names)
    peft = [folder / "unet/w.bin", folder / "model_index.json"]  # the given order, bare names
    assert hash_files(peft) == _names_and_contents(peft, ["w.bin", "model_index.json"])


def _keeping_mtime(change):
    """Shrinking and growing are caught by the size read even where the mtime stays the
    same (filesystems with coarse timestamps)."""

    def changed(path):
        before = path.stat().st_mtime_ns
        change(path)
        os.utime(path, ns=(before, before))

    changed.__name__ = change.__name__
    return changed


@_keeping_mtime
def _shrink(path):
    os.truncate(path, 2 * CHUNK + 10)


@_keeping_mtime
def _grow(path):
    with path.open("ab") as f:
        f.write(b"more")


def _rewrite_in_place(path):
    """Same size, new bytes and a new mtime (set, as a write this quick may keep the old)."""
    with path.open("r+b") as f:
        f.write(os.urandom(CHUNK))
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))


@pytest.mark.parametrize("change", [_shrink, _grow, _rewrite_in_place])
def test_a_file_changed_while_it_is_hashed_is_a_model_error(tmp_path, small_chunks, change):
    path = tmp_path / "x.safetensors"
    path.write_bytes(os.urandom(16 * CHUNK))
    changed = []

    def after_first_chunk(event) -> None:
        if not changed:
            changed.append(change(path))

    with pytest.raises(ModelError, match=r"x\.safetensors: the file changed while it was read"):
        hash_file(path, after_first_chunk)
    assert changed
    hash_file(path)  # the changed file hashes normally afterwards
