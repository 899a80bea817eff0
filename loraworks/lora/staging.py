"""Memory and devices: free memory, and moving LoRA tensors between devices.

Peak memory while a stack is applied, per device: the LoRA layers copied over from another
device + for the largest module an fp32 copy of the original and an fp32 accumulator + what
the patching strategy keeps (`backups.py`: every patched weight's size for ``swap``, on the
host for in-place host copies, nothing for the file). `backups.plan_strategy` refuses a stack
over the free memory before anything is allocated.

Moves go as one transfer per source (device, dtype), at most `PACK_BYTES` at a time: a LoCon
holds ~1000 small tensors, and each pageable host-to-GPU copy is a synchronous driver call.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import psutil
import torch

from .layers import Layer

if TYPE_CHECKING:
    from .patcher import PatchTarget


def free_bytes(dev: torch.device) -> int | None:
    """Memory a new tensor on `dev` can take. On CUDA that includes what PyTorch's caching
    allocator holds unused (e.g. the patched weights of the last stack, freed on restore): the
    driver counts it as taken, so its figure alone would refuse stacks that fit. A process
    capped with `torch.cuda.set_per_process_memory_fraction` (sharing a GPU, or standing in for
    a smaller card) gets no more than its cap. None: unknown."""
    if dev.type == "cuda":
        allocated = torch.cuda.memory_allocated(dev)
        free = torch.cuda.mem_get_info(dev)[0] + torch.cuda.memory_reserved(dev) - allocated
        fraction = torch.cuda.get_per_process_memory_fraction(dev)
        if fraction < 1.0:
            cap = int(fraction * torch.cuda.get_device_properties(dev).total_memory)
            free = min(free, cap - allocated)
        return max(free, 0)
    if dev.type == "cpu":
        return psutil.virtual_memory().available
    return None


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None (another C library, another system)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def give_back_freed_memory() -> None:
    """Hand the host memory the allocator keeps from freed blocks back to the system. Patching
    in place frees sums and file reads of every size; glibc keeps such blocks for reuse (on
    SD1.5, up to 150 MiB stayed resident after an in-place patch, the in-place strategies'
    whole extra), so what the patch holds is only what it needs."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def is_out_of_memory(exc: RuntimeError) -> bool:
    """Whether `exc` is an allocation failure (CUDA's own error, or the CPU allocator's)."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "allocate" in text or "out of memory" in text


def layers_away(targets: list[PatchTarget]) -> dict[torch.device, list[Layer]]:
    """Per device, the layers whose tensors are elsewhere (a LoRA in host memory patching a
    GPU model), each once."""
    away: dict[torch.device, dict[int, Layer]] = {}
    for t in targets:
        dev = t.module.weight.device
        for layer, _ in t.items:
            first = next(iter(layer.all_tensors().values()), None)
            if first is not None and first.device != dev:
                away.setdefault(dev, {})[id(layer)] = layer
    return {dev: list(layers.values()) for dev, layers in away.items()}


def stage(targets: list[PatchTarget], away: dict[torch.device, list[Layer]]) -> None:
    """Swap the layers in `away` for copies on their module's device, moved in one transfer
    per device and dtype instead of two synchronous copies per layer as each is applied. The
    copies live as long as `targets`; the LoRA objects are not changed."""
    copies: dict[int, Layer] = {}
    for dev, layers in away.items():
        copies.update(layer_copies_on(layers, dev))
    if copies:
        for t in targets:
            t.items = [(copies.get(id(layer), layer), w) for layer, w in t.items]


def layer_copies_on(layers: list[Layer], device: torch.device) -> dict[int, Layer]:
    """Copies of `layers` (by id) with their tensors on `device`, moved in one transfer per
    dtype; the layers given are untouched (their LoRA may be in use elsewhere)."""
    copies = {id(layer): _copy_layer(layer) for layer in layers}
    move_layers(copies.values(), device)
    return copies


def _copy_layer(layer: Layer) -> Layer:
    out = copy.copy(layer)
    if out.sparse is not None:
        out.sparse = copy.copy(out.sparse)
    inner = getattr(out, "inner", None)
    if inner is not None:
        out.inner = _copy_layer(inner)
    return out


def move_layers(layers: Iterable[Layer], device, dtype: torch.dtype | None = None) -> None:
    """Every floating-point tensor of `layers` (theirs, a DoRA's inner layer's, a sparse
    diff's) to `device`/`dtype`, set back on the objects that held them."""
    slots: list[tuple[object, str]] = []
    for layer in layers:
        inner = getattr(layer, "inner", None)
        for obj in (layer, inner, layer.sparse, getattr(inner, "sparse", None)):
            if obj is not None:
                slots += [
                    (obj, attr)
                    for attr, val in vars(obj).items()
                    if isinstance(val, torch.Tensor) and val.is_floating_point()
                ]
    tensors = [getattr(obj, attr) for obj, attr in slots]
    target = None if device is None else torch.device(device)
    if target is not None and not all(same_device(t.device, target) for t in tensors):
        moved = move_packed(tensors, target, dtype)
    else:
        moved = [t.to(dtype=dtype) for t in tensors]
    for (obj, attr), t in zip(slots, moved, strict=True):
        setattr(obj, attr, t)


def same_device(a: torch.device, b: torch.device) -> bool:
    """`cuda` is `cuda:0`, as where `.to("cuda")` puts a tensor on a one-GPU machine."""
    return (a.type, a.index or 0) == (b.type, b.index or 0)


#: largest staging buffer of `move_packed`: packing costs that much extra memory on the source
#: side for a moment (a 4 GB full-weight LyCORIS file must not need 4 GB more host RAM)
PACK_BYTES = 256 * 2**20


def move_packed(
    tensors: list[torch.Tensor], device: torch.device, dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    """`[t.to(device, dtype) for t in tensors]` in one copy per source (device, dtype) and
    `PACK_BYTES`: the tensors of a pack are flattened into one buffer, moved, and split back
    into views of it. A tensor that appears twice comes back as one tensor."""
    out: dict[int, torch.Tensor] = {}
    groups: dict[tuple[torch.device, torch.dtype], dict[int, torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), {})[id(t)] = t
    for members in groups.values():
        for pack in _packs(list(members.values())):
            flat = torch.cat([t.reshape(-1) for t in pack]).to(device, dtype)
            for t, part in zip(pack, flat.split([t.numel() for t in pack]), strict=True):
                out[id(t)] = part.view(t.shape)
    return [out[id(t)] for t in tensors]


def _packs(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive runs of `tensors` of at most `PACK_BYTES` each (a bigger tensor alone)."""
    packs: list[list[torch.Tensor]] = [[]]
    used = 0
    for t in tensors:
        size = t.numel() * t.element_size()
        if packs[-1] and used + size > PACK_BYTES:
            packs.append([])
            used = 0
        packs[-1].append(t)
        used += size
    return packs
