"""LoHa (LyCORIS ``algo=loha``, PEFT ``LoHaConfig``): Hadamard product of two low-rank factors.

Leaves: ``hada_w1_a`` [out, r], ``hada_w1_b`` [r, in·k·k], ``hada_w2_a``, ``hada_w2_b``, ``alpha``;
with Tucker/CP conv: ``hada_t1``/``hada_t2`` [r, r, kh, kw], ``hada_w?_a`` [r, out],
``hada_w?_b`` [r, in].

    ΔW = m · (α/r) · (w1a @ w1b) ⊙ (w2a @ w2b)
    Tucker: W1 = einsum("i j k l, j r, i p -> p r k l", t1, w1b, w1a), same for W2

r = ``hada_w1_b.shape[0]``; α missing/0 → r. PEFT: α = config ``alpha`` (LyCORIS
``loha.py``, PEFT ``loha/layer.py``; both apply the scale once in ``forward``).
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, as_weight_shape, f32, lora_scale, require, scalar


class LoHaLayer(Layer):
    kind = "loha"
    leaves = frozenset(
        {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"}
    )
    triggers = ("hada_w1_a",)
    spellings = MappingProxyType({leaf: leaf for leaf in leaves})  # PEFT LoHa keeps the names
    format = "lycoris"

    def __init__(self, w1a, w1b, w2a, w2b, t1=None, t2=None, alpha=None, convention=None):
        convention = convention or Convention()
        if (t1 is None) != (t2 is None):
            raise LoRAFormatError("LoHa needs both hada_t1 and hada_t2 or neither")
        self.w1a, self.w1b, self.w2a, self.w2b, self.t1, self.t2 = w1a, w1b, w2a, w2b, t1, t2
        self.rank = int(w1b.shape[0])
        self.alpha = alpha
        self.scale = lora_scale(alpha, convention.rank or self.rank, convention)
        if t1 is None:
            ok = w1a.shape[1] == w1b.shape[0] and w2a.shape[1] == w2b.shape[0]
            ok = ok and w1a.shape[0] == w2a.shape[0] and w1b.shape[1] == w2b.shape[1]
        else:
            ok = t1.dim() == 4 and t1.shape[:2] == (w1a.shape[0], w1b.shape[0])
            ok = ok and w1a.shape[1] == w2a.shape[1] and w1b.shape[1] == w2b.shape[1]
        if not ok:
            raise LoRAFormatError(
                "LoHa factor shapes do not fit: "
                + ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.tensors().items())
            )

    @classmethod
    def from_state_dict(cls, leaves, convention):
        w1a, w1b, w2a, w2b = require(leaves, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        return cls(
            w1a,
            w1b,
            w2a,
            w2b,
            leaves.get("hada_t1"),
            leaves.get("hada_t2"),
            scalar(leaves.get("alpha")),
            convention,
        )

    def tensors(self):
        out = {"hada_w1_a": self.w1a, "hada_w1_b": self.w1b}
        out.update(hada_w2_a=self.w2a, hada_w2_b=self.w2b)
        if self.t1 is not None:
            out.update(hada_t1=self.t1, hada_t2=self.t2)
        return out

    def delta_shape(self):
        if self.t1 is not None:
            return (int(self.w1a.shape[1]), int(self.w1b.shape[1]), *self.t1.shape[2:])
        return (int(self.w1a.shape[0]), int(self.w1b.shape[1]))

    def is_conv(self):
        return True if self.t1 is not None else None  # a flat [out, in·k·k] could be either

    def in_features(self):
        return int(self.w1b.shape[1])

    def residuals(self, params, weight):
        w = params["weight"]
        d = w.device
        if self.t1 is not None:
            eq = "i j k l, j r, i p -> p r k l"
            w1 = torch.einsum(eq, f32(self.t1, d), f32(self.w1b, d), f32(self.w1a, d))
            w2 = torch.einsum(eq, f32(self.t2, d), f32(self.w2b, d), f32(self.w2a, d))
        else:
            w1 = f32(self.w1a, d) @ f32(self.w1b, d)
            w2 = f32(self.w2a, d) @ f32(self.w2b, d)
        dw = as_weight_shape(w1 * w2, w) * (self.scale * weight)
        return {"weight": self._with_sparse(dw, w, weight), "bias": None}
