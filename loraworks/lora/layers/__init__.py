"""Typed layer kinds and the registry that picks one from a module's leaf keys.

One contract for all kinds (see ``base.py``)::

    layer = layer_from_leaves(leaves, convention, name)     # leaves: {"lora_up.weight": t, ...}
    layer.residuals({"weight": W_fp32, "bias": b_fp32 | None}, m) -> {"weight": ΔW, "bias": Δb}
"""

from __future__ import annotations

from ..errors import LoRAFormatError
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
    "layer_from_leaves",
]

_SPARSE = ("bias_indices", "bias_values", "bias_size")
_DORA = ("dora_scale", "lora_magnitude_vector")

# Order matters only for the error message; leaf sets are disjoint (LyCORIS ``weight_list_det``).
_KINDS: tuple[tuple[str, type[Layer]], ...] = (
    ("lora_down.weight", LoRALayer),
    ("lora_up.weight", LoRALayer),
    ("hada_w1_a", LoHaLayer),
    ("lokr_w1", LoKrLayer),
    ("lokr_w1_a", LoKrLayer),
    ("diff", FullLayer),
    ("w_norm", NormLayer),
    ("oft_blocks", OFTLayer),
    ("oft_R", PeftOFTLayer),
    ("boft_R", PeftBOFTLayer),
    ("a1.weight", GLoRALayer),
    ("ia3_l", IA3Layer),
    ("on_input", IA3Layer),
    ("weight", IA3Layer),
)
_UNSUPPORTED = {
    "oft_diag": "OFT in the LyCORIS 2 layout (oft_diag)",
    "oft_r": "OFT in PEFT's older layout (oft_r)",
}


def layer_from_leaves(
    leaves: dict[str, Tensor], convention: Convention = LYCORIS, name: str = "?"
) -> Layer:
    """Build the typed layer for one module. Raises `LoRAFormatError` naming unknown keys."""
    leaves = dict(leaves)
    sparse = None
    if any(k in leaves for k in _SPARSE):
        try:
            sparse = SparseDiff(*(leaves.pop(k) for k in _SPARSE))
        except KeyError as e:
            raise LoRAFormatError(f"{name}: sparse bias needs {', '.join(_SPARSE)}") from e
    dora = {k: leaves.pop(k) for k in _DORA if k in leaves}
    for key, what in _UNSUPPORTED.items():
        if key in leaves:
            raise LoRAFormatError(
                f"{name}: {what} layers are not supported (keys: {', '.join(sorted(leaves))})"
            )
    cls = next((c for key, c in _KINDS if key in leaves), None)
    if cls is None:
        raise LoRAFormatError(
            f"{name}: unknown LoRA layer kind with keys {', '.join(sorted(leaves)) or '(none)'}"
        )
    unknown = sorted(set(leaves) - cls.leaves)
    if unknown:
        raise LoRAFormatError(
            f"{name}: keys {', '.join(unknown)} are not part of a {cls.kind} layer "
            f"(layer keys: {', '.join(sorted(leaves))})"
        )
    try:
        layer = cls.from_state_dict(leaves, convention)
    except LoRAFormatError as e:
        raise LoRAFormatError(f"{name}: {e}") from None
    if sparse is not None:
        layer.sparse = sparse
    if dora:
        if not isinstance(layer, LoRALayer | LoHaLayer | LoKrLayer):
            raise LoRAFormatError(f"{name}: DoRA magnitude on a {layer.kind} layer")
        mode = "lycoris" if "dora_scale" in dora else "peft"
        try:
            layer = DoRALayer(layer, next(iter(dora.values())), mode)
        except LoRAFormatError as e:
            raise LoRAFormatError(f"{name}: {e}") from None
    return layer
