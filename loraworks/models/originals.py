"""A loaded model's weights read again from its safetensors files: the originals of the
patcher's *file* strategy (`loraworks.lora.backups`), which patches in place and keeps no copy.

The loaders give each model component its file's tensors, cast once (`LazyWeights.take`), and
the key conversion of single files only renames them or takes views of them (the UNet's and
CLIP's renames, the VAE's 1×1 convolutions as linears, open_clip's `in_proj` split into q/k/v).
So each parameter is a view of one tensor read from the file: which one, and where in it, is
noted from the storages when the component is built. Reading that tensor and casting it again
gives the same bits, and the same view of it is the parameter's loaded value. A parameter that
is no such view (a conversion that computed it) is not covered: the patcher keeps a host copy
of it instead.

Pickled checkpoints (`.ckpt`) cannot be read one tensor at a time, so they give no originals.
The files' identity (size, mtime, inode) is noted at load: a file replaced or rewritten since
is reported by `changed()`, and the patcher then refuses to read it back (the caller reloads).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from loraworks.models.lazyweights import LazyWeights


@dataclass(frozen=True)
class _Source:
    """Where a parameter's loaded value is: a view of the file's tensor `key`."""

    key: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class _File:
    path: Path
    dtype: torch.dtype
    identity: tuple[int, int, int]


def _identity(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


#: storage address → (file key, the tensor read for it)
Read = Mapping[int, tuple[str, torch.Tensor]]


def storages(state: Mapping[str, torch.Tensor]) -> Read:
    """The file key of each storage in `state` (tensors just read), by its address: taken
    before a conversion renames or reshapes them. The tensors are held with their keys, so
    that no tensor a conversion computes can reuse the address of one it dropped."""
    return {
        t.untyped_storage().data_ptr(): (key, t)
        for key, t in state.items()
        if t.numel() and t.storage_offset() == 0
    }


class FileOriginals:
    """`OriginalWeights` for a model loaded from safetensors files (single file or folder)."""

    def __init__(self) -> None:
        self._files: dict[str, _File] = {}
        self._sources: dict[str, dict[str, _Source]] = {}

    def __bool__(self) -> bool:
        return bool(self._sources)

    def add(
        self,
        component: str,
        weights: LazyWeights,
        dtype: torch.dtype,
        module: torch.nn.Module,
        read: Read,
    ) -> None:
        """Note where each parameter of `module` (built from `weights` read in `dtype`) lies;
        `read` is `storages()` of the tensors it was built from."""
        if weights.path.suffix.lower() != ".safetensors":
            return
        sources = {}
        for name, param in module.named_parameters():
            hit = read.get(param.untyped_storage().data_ptr()) if param.numel() else None
            if hit is not None and hit[1].dtype == param.dtype:
                sources[name] = _Source(
                    hit[0], tuple(param.shape), tuple(param.stride()), param.storage_offset()
                )
        self._files[component] = _File(weights.path, dtype, _identity(weights.path))
        self._sources[component] = sources

    def covers(self, component: str, name: str) -> bool:
        return name in self._sources.get(component, {})

    def changed(self) -> str | None:
        for file in self._files.values():
            try:
                now = _identity(file.path)
            except OSError as exc:
                return f"{file.path.name} cannot be read any more ({exc.strerror})"
            if now != file.identity:
                return f"{file.path.name} changed on disk since the model was loaded"
        return None

    def read(self, component: str, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Each named parameter's loaded value, one file tensor in memory at a time (a tensor
        several parameters are views of, open_clip's `in_proj`, is read once for them)."""
        file = self._files[component]
        sources = self._sources[component]
        weights = LazyWeights(file.path)
        by_key: dict[str, list[str]] = {}
        for name in names:
            by_key.setdefault(sources[name].key, []).append(name)
        for key, group in by_key.items():
            tensor = weights.take([key], file.dtype)[key]
            for name in group:
                s = sources[name]
                yield name, tensor.as_strided(s.shape, s.stride, s.offset)
