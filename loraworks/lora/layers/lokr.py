"""LoKr (LyCORIS ``algo=lokr``, PEFT ``LoKrConfig``): Kronecker product of two factors.

Leaves: ``lokr_w1`` or ``lokr_w1_a``/``lokr_w1_b``; ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``
with optional ``lokr_t2`` [r, r, kh, kw] (Tucker); ``alpha``.

    W1 = w1 | w1_a @ w1_b
    W2 = w2 | w2_a @ w2_b | einsum("i j k l, i p, j r -> p r k l", t2, w2_a, w2_b)
    ΔW = m · scale · kron(W1, W2)           (W1 unsqueezed to [a, c, 1, 1] for conv)

Scale, per producer:

* LyCORIS / kohya files: α/r with r = ``w1_b.shape[0]`` or ``w2_b.shape[0]`` when a factor is
  low-rank; **when both W1 and W2 are full matrices alpha is ignored (scale 1)** — LyCORIS
  ``lokr.py`` ("use scale = 1"), its Algo-List, ComfyUI and InvokeAI.
* PEFT: always ``alpha / r`` from the config (``lokr/layer.py``: ``scaling = alpha / r``), also
  when both factors are full.

(LyCORIS 4.1.3 ``merge_to`` applies the scale twice; its ``forward`` — which we match — once.)
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, as_weight_shape, lora_scale, scalar


class LoKrLayer(Layer):
    kind = "lokr"
    leaves = frozenset(
        {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
        | {"alpha"}
    )
    triggers = ("lokr_w1", "lokr_w1_a")
    spellings = MappingProxyType({leaf: leaf for leaf in leaves})  # PEFT LoKr keeps the names
    format = "lycoris"

    def __init__(
        self,
        w1=None,
        w1a=None,
        w1b=None,
        w2=None,
        w2a=None,
        w2b=None,
        t2=None,
        alpha=None,
        convention=None,
    ):
        convention = convention or Convention()
        if (w1 is None) == (w1a is None or w1b is None):
            raise LoRAFormatError("LoKr needs lokr_w1 or both lokr_w1_a and lokr_w1_b")
        if (w2 is None) == (w2a is None or w2b is None):
            raise LoRAFormatError("LoKr needs lokr_w2 or both lokr_w2_a and lokr_w2_b")
        if t2 is not None and w2 is not None:
            raise LoRAFormatError("lokr_t2 needs lokr_w2_a/lokr_w2_b, not lokr_w2")
        self.w1, self.w1a, self.w1b = w1, w1a, w1b
        self.w2, self.w2a, self.w2b, self.t2 = w2, w2a, w2b, t2
        self.alpha = alpha
        rank = None
        if w1b is not None:
            rank = int(w1b.shape[0])
        if w2b is not None:
            rank = int(w2b.shape[0])
        self.rank = rank
        self.full = rank is None
        if convention.producer == "peft":
            r = convention.rank or rank
            if r is None:
                raise LoRAFormatError("PEFT LoKr with full factors needs r from the adapter config")
            self.scale = lora_scale(alpha, r, convention)
        elif self.full:
            self.scale = 1.0
        else:
            self.scale = lora_scale(alpha, rank, convention)
        try:
            self._shape = tuple(self._kron(torch.device("meta")).shape)
        except RuntimeError as e:
            raise LoRAFormatError(f"LoKr factor shapes do not fit: {e}") from e

    @classmethod
    def from_state_dict(cls, leaves, convention):
        g = leaves.get
        return cls(
            g("lokr_w1"),
            g("lokr_w1_a"),
            g("lokr_w1_b"),
            g("lokr_w2"),
            g("lokr_w2_a"),
            g("lokr_w2_b"),
            g("lokr_t2"),
            scalar(g("alpha")),
            convention,
        )

    def tensors(self):
        names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
        names += ("lokr_t2",)
        vals = (self.w1, self.w1a, self.w1b, self.w2, self.w2a, self.w2b, self.t2)
        return {n: v for n, v in zip(names, vals, strict=True) if v is not None}

    def _kron(self, d) -> torch.Tensor:
        def t(x):
            return x.to(device=d, dtype=torch.float32)

        w1 = t(self.w1) if self.w1 is not None else t(self.w1a) @ t(self.w1b)
        if self.w2 is not None:
            w2 = t(self.w2)
        elif self.t2 is not None:
            w2 = torch.einsum("i j k l, i p, j r -> p r k l", t(self.t2), t(self.w2a), t(self.w2b))
        else:
            w2 = t(self.w2a) @ t(self.w2b)
        while w1.dim() < w2.dim():
            w1 = w1.unsqueeze(-1)
        return torch.kron(w1, w2.contiguous())

    def delta_shape(self):
        return self._shape

    def is_conv(self):
        return len(self._shape) == 4 or None  # a flat [out, in·k·k] could be either

    def in_features(self):
        return int(self._shape[1]) if len(self._shape) == 2 else None

    def residuals(self, params, weight):
        w = params["weight"]
        dw = as_weight_shape(self._kron(w.device), w) * (self.scale * weight)
        return {"weight": self._with_sparse(dw, w, weight), "bias": None}
