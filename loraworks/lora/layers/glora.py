"""GLoRA (LyCORIS ``algo=glora``): a low-rank turn of the weight plus a low-rank sum.

Leaves ``a1.weight``, ``a2.weight``, ``b1.weight``, ``b2.weight``, ``alpha``. LyCORIS ≥ 2
writes a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in(, kh, kw)] (1×1 on a conv but b2)::

    ΔW = m · (α/r) · (W ×ᵢₙ a1 ×ᵢₙ a2  +  b1 @ b2)      W ×ᵢₙ a: over W's input channels

(LyCORIS 4.1.3 ``glora.py``; r = a2's rows). The first LyCORIS GLoRA (as ComfyUI still reads
it) wrote a1 [r, in], a2 [in, r], b1 [r, in], b2 [out, r] with ΔW = m·(α/r)·(W @ a2 @ a1 +
b2 @ b1), W read as [out, in·kh·kw]; we tell the two apart by the shapes. When both fit (every
factor square: a full-rank GLoRA on a square weight) we read today's layout, where ComfyUI
reads the old one. ΔW reads W:
GLoRA is a non-linear kind. LyCORIS's Tucker option never takes effect for GLoRA in 4.1.3, so
a ``bm.weight`` leaf is refused as unknown.
"""

from __future__ import annotations

import math

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, f32, lora_scale, require, scalar


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


class GLoRALayer(Layer):
    kind = "glora"
    leaves = frozenset({"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"})
    triggers = ("a1.weight",)
    format = "lycoris"
    linear = False

    def __init__(self, a1, a2, b1, b2, alpha=None, convention: Convention | None = None):
        a1f, a2f, b1f, b2f = (_flat(t) for t in (a1, a2, b1, b2))
        new = b2f.shape[0] == b1f.shape[1] == a1f.shape[1] == a2f.shape[0]
        old = b2f.shape[1] == b1f.shape[0] == a1f.shape[0] == a2f.shape[1]
        if not (new or old):
            shapes = ", ".join(str(tuple(t.shape)) for t in (a1, a2, b1, b2))
            raise LoRAFormatError(f"GLoRA factors a1, a2, b1, b2 of shapes {shapes} do not chain")
        self.old = old and not new
        self.a1, self.a2, self.b1, self.b2 = a1, a2, b1, b2
        self.rank = int(a1f.shape[0] if self.old else a2f.shape[0])
        self.alpha = alpha
        self.scale = lora_scale(alpha, self.rank, convention or Convention())

    @classmethod
    def from_state_dict(cls, leaves, convention: Convention):
        a1, a2, b1, b2 = require(leaves, "a1.weight", "a2.weight", "b1.weight", "b2.weight")
        return cls(a1, a2, b1, b2, scalar(leaves.get("alpha")), convention)

    def tensors(self):
        return {
            "a1.weight": self.a1,
            "a2.weight": self.a2,
            "b1.weight": self.b1,
            "b2.weight": self.b2,
        }

    def in_features(self) -> int | None:
        return int(_flat(self.a2).shape[0] if self.old else self.a1.shape[0])

    def out_features(self) -> int | None:
        return int(self.b2.shape[0] if self.old else self.b1.shape[0])

    def check(self, weight_shape) -> str | None:
        out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
        turn_in = fan_in if self.old else weight_shape[1]  # what the a factors act on
        sum_in = _flat(self.b1 if self.old else self.b2).shape[1]
        if out != self.out_features() or turn_in != self.in_features() or sum_in != fan_in:
            layout = "old" if self.old else "LyCORIS 2+"
            return f"GLoRA ({layout} layout, rank {self.rank}) does not fit weight {weight_shape}"
        return None

    def residuals(self, params, weight):
        w = params["weight"]
        a1, a2, b1, b2 = (_flat(f32(t, w.device)) for t in (self.a1, self.a2, self.b1, self.b2))
        if self.old:
            turned = _flat(w) @ a2 @ a1
            summed = b2 @ b1
        else:
            inner = a1 @ a2  # [in, in]: W ×ᵢₙ a1 ×ᵢₙ a2 = W ×ᵢₙ (a1 @ a2)
            turned = torch.einsum("o i ..., i j -> o j ...", w, inner)
            summed = b1 @ b2
        dw = (turned.reshape(w.shape) + summed.reshape(w.shape)) * (self.scale * weight)
        return {"weight": dw, "bias": None}
