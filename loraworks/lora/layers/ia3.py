"""IA³ — two conventions that are **not** interchangeable.

LyCORIS / A1111 (``weight`` + ``on_input``): ``weight`` is a *delta* initialised to 0::

    W' = W ⊙ (1 + m·w)      broadcast over output rows, or over input columns when on_input
    bias unchanged           (LyCORIS ``ia3.py`` rebuilds only the weight)

PEFT (``ia3_l``): an *absolute* scale initialised to 1, [out, 1] for ordinary modules and
[1, in] for ``feedforward_modules`` (conv: [1, n, 1, 1], the axis then comes from the config)::

    W' = W ⊙ l              and, on the output axis, b' = b ⊙ l (PEFT ``ia3/layer.py`` merge)

Our user weight m for PEFT IA³ interpolates the scale: **W' = W ⊙ (1 + m·(l − 1))** (bias alike
on the output axis), so m = 1 is PEFT's merge, m = 0 is the untouched model, and m is linear in
the effect as for every other kind.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, Tensor, f32


class IA3Layer(Layer):
    kind = "ia3"
    leaves = frozenset({"weight", "on_input", "ia3_l"})
    triggers = ("ia3_l", "on_input", "weight")
    spellings = MappingProxyType({"ia3_l": "ia3_l"})
    count_leaves = frozenset({"on_input"})
    linear = False

    def __init__(self, vector: Tensor, on_input: bool | None, producer: str):
        self.vector = vector
        self.on_input = on_input  # None: PEFT conv on a square layer without config → out axis
        self.producer = producer

    @classmethod
    def from_state_dict(cls, leaves, convention: Convention):
        if "ia3_l" in leaves:
            vec = leaves["ia3_l"]
            on_input = convention.feedforward
            if on_input is None and vec.dim() == 2:
                on_input = vec.shape[0] == 1 and vec.shape[1] != 1
            return cls(vec, on_input, "peft")
        if "weight" not in leaves:
            raise LoRAFormatError("IA3 layer needs 'weight' (LyCORIS) or 'ia3_l' (PEFT)")
        on = leaves.get("on_input")
        on_input = False
        if isinstance(on, Tensor) and on.numel():
            on_input = bool(on.reshape(-1)[0].item())
        return cls(leaves["weight"], on_input, "lycoris")

    @property
    def touches_bias(self) -> bool:
        return self.producer == "peft"

    @property
    def format(self) -> str | None:
        """``weight``/``on_input`` leaves are LyCORIS's IA³; PEFT's ``ia3_l`` implies nothing."""
        return "lycoris" if self.producer == "lycoris" else None

    def tensors(self):
        return {"ia3_l" if self.producer == "peft" else "weight": self.vector}

    def out_features(self):
        return int(self.vector.numel()) if self.on_input is False else None

    def is_conv(self):
        return self.vector.dim() == 4

    def in_features(self):
        return int(self.vector.numel()) if self.on_input else None

    def _axis(self, w: Tensor) -> bool:
        """True → input axis."""
        if self.on_input is not None:
            return self.on_input
        n = self.vector.numel()
        return n == w.shape[1] and n != w.shape[0]

    def check(self, weight_shape) -> str | None:
        n = self.vector.numel()
        axis_in = (
            self.on_input
            if self.on_input is not None
            else (n == weight_shape[1] and n != weight_shape[0])
        )
        want = weight_shape[1] if axis_in else weight_shape[0]
        if n != want:
            return f"IA3 vector of {n} does not fit weight {tuple(weight_shape)}"
        return None

    def residuals(self, params, weight):
        w = params["weight"]
        v = f32(self.vector, w.device).reshape(-1)
        if self.producer == "peft":
            v = v - 1.0
        v = v * weight
        on_input = self._axis(w)
        shape = [1] * w.dim()
        shape[1 if on_input else 0] = v.numel()
        dw = w * v.reshape(shape)
        db = None
        b = params.get("bias")
        if self.producer == "peft" and not on_input and b is not None:
            db = b * v
        return {"weight": dw, "bias": db}


_ = torch  # re-exported type context
