"""Reading weight files without running anyone's code: the one reader of the engine and the
model manager, so that every file meets the same caps, checks and policy.

* ``.safetensors``: the header's claimed length is capped (`MAX_HEADER_BYTES`) before it is
  parsed, and every tensor entry is checked to lie inside the file; tensors are then read by
  safetensors. A caller that already holds the `Header` passes it on: one parse per file.
* pickles (``.bin/.pt/.ckpt/.pth``): only ``torch.load(weights_only=True)``, which refuses any
  object that is not plain tensors and containers (nothing in the file runs). A top-level
  ``state_dict`` is unwrapped (checkpoints). **One policy for other entries**: anything that is
  not a string key holding a tensor (a checkpoint's ``global_step``, a trainer's ``epoch``) is
  left out and named in `WeightFile.ignored`; the engine reports it as a LoRA warning.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import boundedjson
from .errors import WeightFileError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
#: a diffusers pipeline's LoRA (``save_lora_weights``), and a PEFT adapter folder's weights
DIFFUSERS_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
PEFT_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_CONFIG_NAME = "adapter_config.json"

#: safetensors headers larger than this are refused before parsing, for LoRAs and main models
#: alike (real LoRA headers are well under 1 MiB; a big kohya ``ss_tag_frequency`` or a
#: checkpoint's few thousand tensor entries stay far below this)
MAX_HEADER_BYTES = 64 * 1024 * 1024
#: a PEFT ``adapter_config.json`` is a few hundred bytes
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of a tensor as a safetensors header declares it."""

    shape: tuple[int, ...]
    dtype: str


@dataclass
class Header:
    """A parsed, checked safetensors header."""

    length: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


@dataclass
class WeightFile:
    """A weight file's tensors, its string metadata (safetensors only) and what was left out."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    #: pickle entries that are not a string key holding a tensor (not read)
    ignored: list[str] = field(default_factory=list)


def is_pickle(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def read_header(path: str | os.PathLike) -> Header:
    """Parse a safetensors header after checking its length against the file and the cap;
    raises `WeightFileError` (``unsafe`` for an absurd length)."""
    path = Path(path)
    size = path.stat().st_size

    def refuse(reason: str, unsafe: bool = False) -> WeightFileError:
        return WeightFileError(f"{path.name}: not a valid safetensors file ({reason})", unsafe)

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightFileError(f"{path.name}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise refuse(
                f"header of {n} bytes in a {size}-byte file: the header claims more than the "
                f"file holds or the {MAX_HEADER_BYTES // 2**20} MiB limit allows; refusing to "
                "parse it",
                unsafe=True,
            )
        raw = f.read(n)
    try:
        parsed = boundedjson.loads(raw, MAX_HEADER_BYTES)
    except (UnicodeDecodeError, ValueError) as e:
        raise refuse(f"header is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise refuse("header is not a JSON object")
    data_len = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for key, info in parsed.items():
        if key == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise refuse("__metadata__ is not an object")
            metadata = {str(k): str(v) for k, v in (info or {}).items()}
            continue
        try:
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(s) for s in info["shape"])
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise refuse(f"malformed entry for tensor {key!r}") from None
        if not (0 <= start <= end <= data_len) or any(s < 0 for s in shape):
            raise refuse(f"tensor {key!r} lies outside the file (truncated or corrupt)")
        tensors[key] = TensorInfo(shape, dtype)
    return Header(n, tensors, metadata)


def read_weights(path: str | os.PathLike, header: Header | None = None) -> WeightFile:
    """Every tensor of a weight file (see the module docstring for the rules)."""
    path = Path(path)
    if is_pickle(path):
        return _read_pickle(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise WeightFileError(
            f"{path.name}: unsupported file type '{path.suffix}' "
            f"(expected one of {', '.join(WEIGHT_SUFFIXES)})"
        )
    header = header or read_header(path)
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise WeightFileError(f"{path.name}: cannot read tensors ({e})") from None
    return WeightFile(path, tensors, header.metadata)


def _read_pickle(path: Path) -> WeightFile:
    return pickle_weights(path, load_pickle(path))


def load_pickle(path: str | os.PathLike) -> Any:
    """A pickle's object as ``torch.load(weights_only=True)`` gives it (nested containers
    kept: textual-inversion files hold their vectors one level down); refused otherwise."""
    path = Path(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightFileError(
            f"{path.name}: refused to load this pickle file: it is not plain weights that "
            f"torch.load(weights_only=True) accepts ({reason}); convert it to .safetensors",
            unsafe=True,
        ) from None


def pickle_weights(path: Path, obj: Any) -> WeightFile:
    """A loaded pickle's tensors under the policy of the module docstring."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path.name}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightFileError(f"{path.name}: holds no tensors")
    ignored = sorted(str(k) for k in obj if k not in tensors)
    return WeightFile(path, tensors, ignored=ignored)


def read_peft_config(folder: Path) -> dict[str, Any] | None:
    """A PEFT folder's ``adapter_config.json`` (None when there is none)."""
    cfg = folder / PEFT_CONFIG_NAME
    if not cfg.is_file():
        return None
    try:
        with cfg.open("rb") as f:
            data = boundedjson.loads(f.read(MAX_CONFIG_BYTES + 1), MAX_CONFIG_BYTES)
    except (OSError, ValueError) as e:
        raise WeightFileError(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise WeightFileError(f"{cfg}: not a JSON object")
    return data
