"""The parsed, reusable LoRA object."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .layers import Layer


@dataclass(eq=False)
class LoRA:
    """A LoRA file, parsed once: typed layers keyed by target module path.

    ``layers`` keys are ``"<component>.<module path>"`` with diffusers module names, e.g.
    ``"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"`` or
    ``"text_encoder.text_model.encoder.layers.0.self_attn.q_proj"``. Equality is identity (a
    `LoRAPatcher` compares stacks by object).
    """

    layers: dict[str, Layer]
    base: str
    format: str
    metadata: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    source: str | None = None
    #: every base this LoRA's layers fit (e.g. a CLIP-L-only LoRA fits sd1 and sdxl)
    compatible_bases: frozenset[str] = frozenset()
    #: how the base was decided (for people reading ``loraworks models show``)
    base_evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: UNet naming of a kohya file: "diffusers" (SD1/SD2, LCM-LoRA) or "sgm" (kohya SDXL)
    unet_names: str | None = None

    def __post_init__(self):
        if not self.compatible_bases:
            self.compatible_bases = frozenset({self.base})

    # --- facts ------------------------------------------------------------------------------
    @property
    def components(self) -> set[str]:
        return {k.split(".", 1)[0] for k in self.layers}

    @property
    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers.values():
            out[layer.kind] = out.get(layer.kind, 0) + 1
        return out

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers.values())

    @property
    def device(self) -> torch.device:
        """Where the tensors are (`to` moves them all together; CPU for an empty LoRA)."""
        for layer in self.layers.values():
            for t in layer.all_tensors().values():
                return t.device
        return torch.device("cpu")

    def to(self, device=None, dtype: torch.dtype | None = None) -> LoRA:
        """Move every tensor (e.g. to the GPU once, so each apply skips the copy).

        A move to another device goes as one transfer per source dtype (`move_packed`), not
        one per tensor: a LoCon holds ~1000 small tensors, and each pageable host-to-GPU copy
        is a synchronous driver call."""
        cap = torch.finfo(dtype).max if dtype is not None and dtype.is_floating_point else None
        for layer in self.layers.values():
            for part in (layer, getattr(layer, "inner", None)):
                if cap is not None and part is not None and part.max_abs:
                    # a value beyond the new dtype's range becomes inf there (rounding inside
                    # it stays far within the overflow bound's 4x margin)
                    part.max_abs = {k: v if v <= cap else math.inf for k, v in part.max_abs.items()}
        _move(self.layers.values(), device, dtype)
        return self

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}×{n}" for k, n in sorted(self.kinds.items()))
        return (
            f"LoRA(name={self.name!r}, base={self.base!r}, format={self.format!r}, "
            f"layers={len(self.layers)} [{kinds}])"
        )


def layer_copies_on(layers: list[Layer], device: torch.device) -> dict[int, Layer]:
    """Copies of `layers` (by id) with their tensors on `device`, moved in one transfer per
    dtype; the layers given are untouched (their LoRA may be in use elsewhere)."""
    copies = {id(layer): _copy_layer(layer) for layer in layers}
    _move(copies.values(), device)
    return copies


def _copy_layer(layer: Layer) -> Layer:
    out = copy.copy(layer)
    if out.sparse is not None:
        out.sparse = copy.copy(out.sparse)
    inner = getattr(out, "inner", None)
    if inner is not None:
        out.inner = _copy_layer(inner)
    return out


def _move(layers: Iterable[Layer], device, dtype: torch.dtype | None = None) -> None:
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
