"""A main model's weight file, read tensor by tensor and cast as it is read.

Loading must never hold the file's tensors and the model at once. safetensors' own reader
maps the whole file, and every page a cast touches stays resident until the last tensor of the
map is dropped: casting a 7 GB SDXL file to bfloat16 through it peaks at file + model. Here
tensors are read with plain reads (the page cache is not counted in a process's memory): one
already in the target dtype straight into its own memory, one to cast into a reused scratch
buffer a few MiB at a time and from there, cast, into its own memory. A load peaks at the
model's size in its dtype plus that buffer, and the weights are private memory: rewriting the
file while the model is loaded changes nothing (a mapped weight would change, or fault).

Pickles (`.ckpt`) can only be read whole, weights-only (`safefiles.read_weights`); their
tensors are let go as they are taken, so a cast copy replaces the original step by step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from loraworks.models.errors import ModelError
from loraworks.models.safefiles import read_header, read_weights

#: safetensors dtype names → torch dtypes
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


#: bytes of a tensor read and cast at a time (the scratch buffer's size)
CAST_CHUNK = 4 << 20


@dataclass(frozen=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floating tensors in `dtype` (`tensor.to(dtype)`, bit for bit); others as they are
    (integer position ids, step counters)."""
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


class LazyWeights:
    """The tensors of one weight file by name; only the header is read until `take`."""

    def __init__(self, path: Path):
        self.path = path
        self._loaded: dict[str, torch.Tensor] | None = None
        self._entries: dict[str, _Entry] = {}
        self.shapes: dict[str, tuple[int, ...]]
        if path.suffix.lower() == ".safetensors":
            self._entries = _entries(path)
            self.shapes = {k: e.shape for k, e in self._entries.items()}
        else:  # a pickle, or a suffix read_weights refuses with the reason
            self._loaded = read_weights(path).tensors
            self.shapes = {k: tuple(v.shape) for k, v in self._loaded.items()}

    def meta(self) -> dict[str, torch.Tensor]:
        """Shape-only (meta) tensors by name, to read an architecture off without reading any
        data."""
        return {k: torch.empty(shape, device="meta") for k, shape in self.shapes.items()}

    def take(self, keys: Iterable[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The tensors named `keys`, floating ones cast to `dtype`; each is read and cast
        before the next is read. A pickle's tensors are dropped from memory as they go."""
        if self._loaded is not None:
            return {k: cast(self._loaded.pop(k), dtype) for k in keys}
        out: dict[str, torch.Tensor] = {}
        # a tensor to cast is read a piece at a time into one small reused buffer and cast from
        # there into its own memory: the piece is still in the CPU's cache when it is cast, and
        # no freed read buffer per tensor (page faults on every read, a fragmented heap)
        scratch = torch.empty(CAST_CHUNK, dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            for key in keys:
                entry, stored = self._entry(key)
                wanted = dtype if stored.is_floating_point else stored
                target = torch.empty(entry.shape, dtype=wanted)
                f.seek(entry.start)
                if wanted == stored:
                    out[key] = self._fill(f, target)
                    continue
                flat, step = target.view(-1), CAST_CHUNK // stored.itemsize
                for first in range(0, flat.numel(), step):
                    piece = flat[first : first + step]
                    raw = scratch[: piece.numel() * stored.itemsize].view(stored)
                    # `copy_` is the kernel `tensor.to(dtype)` runs, element by element: the
                    # same bits
                    piece.copy_(self._fill(f, raw))
                out[key] = target
        return out

    def nbytes(self, keys: Iterable[str], dtype: torch.dtype) -> int:
        """Bytes `take(keys, dtype)` will hold, known from the header."""
        total = 0
        for key in keys:
            stored = self._loaded[key].dtype if self._loaded is not None else self._entry(key)[1]
            size = dtype.itemsize if stored.is_floating_point else stored.itemsize
            total += torch.Size(self.shapes[key]).numel() * size
        return total

    def _entry(self, key: str) -> tuple[_Entry, torch.dtype]:
        entry = self._entries[key]
        dtype = SAFETENSORS_DTYPES.get(entry.dtype)
        if dtype is None:
            raise ModelError(
                f"{self.path.name}: tensor {key!r} has dtype {entry.dtype}, which "
                "loraworks cannot read"
            )
        nbytes = torch.Size(entry.shape).numel() * dtype.itemsize
        if entry.end - entry.start != nbytes:
            raise ModelError(
                f"{self.path.name}: tensor {key!r} declares {entry.end - entry.start} bytes for "
                f"shape {list(entry.shape)} in {entry.dtype} ({nbytes}); the file is corrupt"
            )
        return entry, dtype

    def _fill(self, f: BinaryIO, into: torch.Tensor) -> torch.Tensor:
        """`into` (contiguous) filled with the next bytes of `f`."""
        view = memoryview(into.reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < len(view):  # one read returns at most ~2 GiB
            got = f.readinto(view[done:])
            if not got:
                raise ModelError(f"{self.path.name}: the file ends inside a tensor (truncated)")
            done += got
        return into


def stored_bytes(
    path: Path, dtype: torch.dtype, select: Callable[[LazyWeights], Iterable[str]]
) -> int:
    """Bytes `take(select(weights), dtype)` would hold, from the safetensors header alone. A
    pickle cannot be listed without reading it whole: its file size stands in (off by the
    dtype ratio when it is cast)."""
    if path.suffix.lower() != ".safetensors":
        return path.stat().st_size
    weights = LazyWeights(path)
    return weights.nbytes(select(weights), dtype)


def _entries(path: Path) -> dict[str, _Entry]:
    """Every tensor's dtype, shape and place in the file. `read_header` checks the header (its
    length cap, that every tensor lies inside the file) and keeps shapes and dtypes; the data
    offsets it checked are read here from the same bytes."""
    header = read_header(path)
    with open(path, "rb") as f:
        f.seek(8)
        raw = json.loads(f.read(header.length))
    data = 8 + header.length
    return {
        key: _Entry(info.dtype, info.shape, *(data + int(o) for o in raw[key]["data_offsets"]))
        for key, info in header.tensors.items()
    }
