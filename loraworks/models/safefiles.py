"""Reading weight files without running anyone's code.

`.safetensors` headers are size-capped before they are parsed (by the engine's reader);
pickle-based files (`.ckpt/.pt/.bin/.pth`) only go through `torch.load(weights_only=True)`,
which refuses any object that is not plain tensors and containers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from loraworks.lora import SafetensorsHeaderError, header_metadata, read_safetensors_header
from loraworks.models.errors import ModelError, UnsafeFileError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES


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
    """Parse a safetensors header without loading tensors; refuse anything malformed.

    The engine's reader does the checks (one cap, one set of rules for LoRAs and models); its
    refusal becomes a `ModelError` here, an `UnsafeFileError` for an absurd header length.
    """
    try:
        _, header = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        raise (UnsafeFileError if exc.too_large else ModelError)(str(exc)) from None
    tensors = {
        k: TensorInfo(shape=tuple(int(s) for s in v["shape"]), dtype=str(v["dtype"]))
        for k, v in header.items()
        if k != "__metadata__"
    }
    return Header(tensors=tensors, metadata=header_metadata(header))


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
