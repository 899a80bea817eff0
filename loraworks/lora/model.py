"""The parsed, reusable LoRA object."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .layers import Layer
from .staging import move_layers


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
        move_layers(self.layers.values(), device, dtype)
        return self

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}×{n}" for k, n in sorted(self.kinds.items()))
        return (
            f"LoRA(name={self.name!r}, base={self.base!r}, format={self.format!r}, "
            f"layers={len(self.layers)} [{kinds}])"
        )
