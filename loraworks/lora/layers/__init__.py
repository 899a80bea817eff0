"""Typed layer kinds and the registry that picks one from a module's leaf keys.

One contract for all kinds (see ``base.py``)::

    layer = layer_from_leaves(leaves, convention, name)     # leaves: {"lora_up.weight": t, ...}
    layer.residuals({"weight": W_fp32, "bias": b_fp32 | None}, m) -> {"weight": ΔW, "bias": Δb}

Each kind is one module; the list below registers them (`registry.register` is the entry point
for a new kind, see docs/formats.md). The order only decides which kind an error message names.
"""

from __future__ import annotations

from .base import LYCORIS, Convention, Layer, SparseDiff, Tensor
from .dora import DoRALayer
from .full import FullLayer
from .glora import GLoRALayer
from .ia3 import IA3Layer
from .loha import LoHaLayer
from .lokr import LoKrLayer
from .lora import LoRALayer
from .norm import NormLayer
from .oft import BOFTLayer, OFTLayer
from .peft_boft import PeftBOFTLayer
from .peft_oft import PeftOFTLayer
from .registry import kinds, layer_from_leaves, leaf_heads, register, spellings

for _kind in (
    LoRALayer,
    LoHaLayer,
    LoKrLayer,
    FullLayer,
    NormLayer,
    OFTLayer,
    PeftOFTLayer,
    PeftBOFTLayer,
    GLoRALayer,
    IA3Layer,
    DoRALayer,
):
    register(_kind)

__all__ = [
    "LYCORIS",
    "BOFTLayer",
    "Convention",
    "DoRALayer",
    "FullLayer",
    "GLoRALayer",
    "IA3Layer",
    "Layer",
    "LoHaLayer",
    "LoKrLayer",
    "LoRALayer",
    "NormLayer",
    "OFTLayer",
    "PeftBOFTLayer",
    "PeftOFTLayer",
    "SparseDiff",
    "Tensor",
    "kinds",
    "layer_from_leaves",
    "leaf_heads",
    "register",
    "spellings",
]
