"""OFT — orthogonal finetuning (LyCORIS ``diag-oft``, kohya ``networks/oft.py``).

Leaves: ``oft_blocks`` [n, b, b] (n blocks of b output rows, n·b = out), ``alpha`` (the
constraint c, 0 = none), optional ``rescale`` [out, 1(, 1, 1)] (LyCORIS ``rescaled=True``)::

    Q = B − Bᵀ                       per block (skew-symmetric)
    Q ← Q · (c·out) / ‖Q‖            when c > 0 and ‖Q‖ (Frobenius over all blocks) exceeds it
    R = (I + Q)(I − Q)⁻¹             per block (Cayley transform: R is orthogonal)
    ΔW_k = m · (R_k − I)ᵀ W_k        for block k of W's output rows (LyCORIS ``make_weight``)
    with rescale s:  ΔW ← s ⊙ ΔW + (s − 1) ⊙ W

The rescale term is not scaled by the user weight m, as LyCORIS applies it; at m = 0 the
patcher skips the layer like every kind, so there a rescaled OFT is off (LyCORIS would still
apply s). ΔW multiplies W, so OFT is a non-linear kind: its residual is computed from the
original weight (the stacking order is that of DoRA and IA³, see ``patch.py``). BOFT
(butterfly, 4-D ``oft_blocks``) and the LyCORIS 2 ``oft_diag`` layout are refused by name.
"""

from __future__ import annotations

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, Tensor, f32, scalar


class OFTLayer(Layer):
    kind = "oft"
    leaves = frozenset({"oft_blocks", "alpha", "rescale"})
    linear = False

    def __init__(self, blocks: Tensor, constraint: float, rescale: Tensor | None = None):
        if blocks.dim() == 4:
            raise LoRAFormatError("BOFT (butterfly OFT, 4-D oft_blocks) layers are not supported")
        if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
            raise LoRAFormatError(f"oft_blocks must be [n, b, b], got {tuple(blocks.shape)}")
        self.blocks = blocks
        self.constraint = constraint
        self.rescale = rescale
        if rescale is not None and rescale.numel() != self.out_features():
            raise LoRAFormatError(
                f"rescale of {rescale.numel()} values does not fit {self.out_features()} rows"
            )

    @classmethod
    def from_state_dict(cls, leaves, convention: Convention):
        if "oft_blocks" not in leaves:
            raise LoRAFormatError("OFT layer needs 'oft_blocks'")
        return cls(leaves["oft_blocks"], scalar(leaves.get("alpha")) or 0.0, leaves.get("rescale"))

    def tensors(self):
        out = {"oft_blocks": self.blocks}
        if self.rescale is not None:
            out["rescale"] = self.rescale
        return out

    def out_features(self):
        return int(self.blocks.shape[0] * self.blocks.shape[1])

    def is_conv(self):
        return None if self.rescale is None else self.rescale.dim() == 4

    def check(self, weight_shape) -> str | None:
        if weight_shape[0] != self.out_features():
            n, b = int(self.blocks.shape[0]), int(self.blocks.shape[1])
            return f"OFT of {n} blocks of {b} rows does not fit weight {tuple(weight_shape)}"
        return None

    def rotation(self, device) -> Tensor:
        """R per block, fp32 [n, b, b]."""
        blocks = f32(self.blocks, device)
        q = blocks - blocks.transpose(1, 2)
        if self.constraint > 0:
            limit = self.constraint * self.out_features()
            q = q * torch.clamp(limit / (torch.linalg.norm(q) + 1e-8), max=1.0)
        eye = torch.eye(q.shape[-1], device=device)
        return (eye + q) @ torch.linalg.inv(eye - q)

    def residuals(self, params, strength):
        w = params["weight"]
        n, b = int(self.blocks.shape[0]), int(self.blocks.shape[1])
        turn = (self.rotation(w.device) - torch.eye(b, device=w.device)) * strength
        rows = w.reshape(n, b, *w.shape[1:])
        dw = torch.einsum("k n m, k n ... -> k m ...", turn, rows).reshape(w.shape)
        if self.rescale is not None:
            s = f32(self.rescale, w.device).reshape(-1, *[1] * (w.dim() - 1))
            dw = s * dw + (s - 1) * w
        return {"weight": dw, "bias": None}
