"""Reading weight files without running anyone's code.

`.safetensors` headers are size-capped before they are parsed; pickle-based files
(`.ckpt/.pt/.bin/.pth`) only go through `torch.load(weights_only=True)`, which refuses any
object that is not plain tensors and containers.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from loraworks.models.errors import ModelError, UnsafeFileError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass
class TensorInfo:
    """Name, shape and dtype of a tensor as a safetensors header declares it."""

    shape: tuple[int, ...]
    dtype: str


@dataclass
class Header:
    """A safetensors header: tensor shapes and the raw string metadata."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: Path) -> Header:
    """Parse a safetensors header without loading tensors; refuse anything malformed."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise ModelError(f"{path.name}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw_len)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise UnsafeFileError(
                f"{path.name}: not a valid safetensors file (header of {length} bytes "
                f"in a {size}-byte file)"
            )
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path.name}: not a valid safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path.name}: not a valid safetensors file (header is not a table)")
    raw_meta = header.pop("__metadata__", None) or {}
    try:
        tensors = {
            k: TensorInfo(shape=tuple(v["shape"]), dtype=v["dtype"]) for k, v in header.items()
        }
    except (TypeError, KeyError) as exc:
        raise ModelError(f"{path.name}: not a valid safetensors file ({exc})") from None
    metadata = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
    return Header(tensors=tensors, metadata=metadata)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weight file; pickles only through the weights-only unpickler."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        read_header(path)
        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelError(f"{path.name}: cannot read tensors ({exc})") from None
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(path)
    raise ModelError(f"{path.name}: unsupported file type '{path.suffix}'")


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeFileError(
            f"{path.name}: refused — a pickle file that cannot be read as plain weights "
            f"(torch.load weights_only=True: {reason}); convert it to .safetensors"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"{path.name}: holds a {type(obj).__name__}, not a table of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{path.name}: holds no tensors")
    return tensors


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor; cheap for safetensors (header only)."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return {k: v.shape for k, v in read_header(path).tensors.items()}
    return {k: tuple(v.shape) for k, v in load_state_dict(path).items()}


def file_metadata(path: Path) -> dict[str, str]:
    """The safetensors `__metadata__` table; empty for pickles (they have none)."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return read_header(path).metadata
    return {}
