"""Full weight difference (LyCORIS ``algo=full``, kohya "diff"): ``diff`` = ΔW, ``diff_b`` = Δb.

W' = W + m·diff,   b' = b + m·diff_b       (no alpha)
"""

from __future__ import annotations

from .base import Layer, as_weight_shape, f32, require


class FullLayer(Layer):
    kind = "full"
    leaves = frozenset({"diff", "diff_b"})
    triggers = ("diff",)
    format = "lycoris"
    w_key, b_key = "diff", "diff_b"

    def __init__(self, diff, diff_b=None):
        self.diff, self.diff_b = diff, diff_b

    @classmethod
    def from_state_dict(cls, leaves, convention):
        (diff,) = require(leaves, cls.w_key)
        return cls(diff, leaves.get(cls.b_key))

    @property
    def touches_bias(self) -> bool:
        return self.diff_b is not None

    def tensors(self):
        out = {self.w_key: self.diff}
        if self.diff_b is not None:
            out[self.b_key] = self.diff_b
        return out

    def delta_shape(self):
        return tuple(self.diff.shape)

    def in_features(self):
        return int(self.diff.shape[1]) if self.diff.dim() >= 2 else None

    def residuals(self, params, weight):
        w = params["weight"]
        dw = as_weight_shape(f32(self.diff, w.device), w) * weight
        db = None
        if self.diff_b is not None:
            db = f32(self.diff_b, w.device).reshape(-1) * weight
        return {"weight": self._with_sparse(dw, w, weight), "bias": db}
