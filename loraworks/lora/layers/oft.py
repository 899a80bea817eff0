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
original weight (the stacking order is that of DoRA and IA³, see ``patcher.py``).

BOFT — butterfly OFT (LyCORIS ``boft``): ``oft_blocks`` [s, n, b, b], s stages. R_i is the
Cayley rotation of stage i's blocks (the constraint over all stages at once). Stage i pairs
rows 2^i·b/2 apart: it permutes the rows of W by P_i (each group of 2^i·b rows read as
[2, 2^i·b/2] and transposed), multiplies each block of b permuted rows by
R_i,m = m·R_i + (1 − m)·I, and permutes back::

    W' = P_{s−1}ᵀ R_{s−1,m} P_{s−1} ⋯ P_0ᵀ R_{0,m} P_0 W;   with rescale: W' ← s ⊙ W'
    ΔW = W' − W

m interpolates every stage (LyCORIS ``boft.diff_weight``), so ΔW is not linear in m. The
LyCORIS 2 ``oft_diag`` layout is refused by name.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, Tensor, f32, scalar


class OFTLayer(Layer):
    kind = "oft"
    leaves = frozenset({"oft_blocks", "alpha", "rescale"})
    triggers = ("oft_blocks",)
    refused = MappingProxyType({"oft_diag": "OFT in the LyCORIS 2 layout (oft_diag)"})
    format = "lycoris"
    linear = False

    def __init__(self, blocks: Tensor, constraint: float, rescale: Tensor | None = None):
        self._check_blocks(blocks)
        self.blocks = blocks
        self.constraint = constraint
        self.rescale = rescale
        if rescale is not None and rescale.numel() != self.out_features():
            raise LoRAFormatError(
                f"rescale of {rescale.numel()} values does not fit {self.out_features()} rows"
            )

    @staticmethod
    def _check_blocks(blocks: Tensor) -> None:
        if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
            raise LoRAFormatError(f"oft_blocks must be [n, b, b], got {tuple(blocks.shape)}")

    @classmethod
    def from_state_dict(cls, leaves, convention: Convention):
        if "oft_blocks" not in leaves:
            raise LoRAFormatError("OFT layer needs 'oft_blocks'")
        kind = BOFTLayer if leaves["oft_blocks"].dim() == 4 else cls
        constraint = scalar(leaves.get("alpha")) or 0.0
        return kind(leaves["oft_blocks"], constraint, leaves.get("rescale"))

    def tensors(self):
        out = {"oft_blocks": self.blocks}
        if self.rescale is not None:
            out["rescale"] = self.rescale
        return out

    def out_features(self):
        return int(self.blocks.shape[-3] * self.blocks.shape[-2])

    def is_conv(self):
        return None if self.rescale is None else self.rescale.dim() == 4

    def check(self, weight_shape) -> str | None:
        if weight_shape[0] != self.out_features():
            n, b = int(self.blocks.shape[-3]), int(self.blocks.shape[-2])
            what = f"{self.kind.upper()} of {n} blocks of {b} rows"
            return f"{what} does not fit weight {tuple(weight_shape)}"
        return None

    def rotation(self, device) -> Tensor:
        """R per block, fp32 (the blocks' shape): the Cayley transform of the skew-symmetric
        part, scaled down first when the constraint binds."""
        blocks = f32(self.blocks, device)
        q = blocks - blocks.transpose(-1, -2)
        if self.constraint > 0:
            limit = self.constraint * self.out_features()
            q = q * torch.clamp(limit / (torch.linalg.norm(q) + 1e-8), max=1.0)
        eye = torch.eye(q.shape[-1], device=device)
        return (eye + q) @ torch.linalg.inv(eye - q)

    def _row_scale(self, w: Tensor) -> Tensor | None:
        if self.rescale is None:
            return None
        return f32(self.rescale, w.device).reshape(-1, *[1] * (w.dim() - 1))

    def residuals(self, params, weight):
        w = params["weight"]
        n, b = int(self.blocks.shape[0]), int(self.blocks.shape[1])
        turn = (self.rotation(w.device) - torch.eye(b, device=w.device)) * weight
        rows = w.reshape(n, b, *w.shape[1:])
        dw = torch.einsum("k n m, k n ... -> k m ...", turn, rows).reshape(w.shape)
        scale = self._row_scale(w)
        if scale is not None:
            dw = scale * dw + (scale - 1) * w
        return {"weight": dw, "bias": None}


class BOFTLayer(OFTLayer):
    kind = "boft"

    @staticmethod
    def _check_blocks(blocks: Tensor) -> None:
        if blocks.dim() != 4 or blocks.shape[2] != blocks.shape[3] or blocks.shape[2] % 2:
            shape = tuple(blocks.shape)
            raise LoRAFormatError(f"BOFT oft_blocks must be [s, n, b, b], b even; got {shape}")
        stages, n, b = (int(x) for x in blocks.shape[:3])
        if stages < 1 or (n * b) % (2 ** (stages - 1) * b):  # stage i mixes groups of 2^i·b
            raise LoRAFormatError(f"{stages} butterfly stages do not fit {n} blocks of {b} rows")

    def residuals(self, params, weight):
        w = params["weight"]
        stages, n, b = (int(x) for x in self.blocks.shape[:3])
        eye = torch.eye(b, device=w.device)
        rot = self.rotation(w.device)
        rows = torch.arange(n * b, device=w.device)
        x = w
        for i in range(stages):
            stage = weight * rot[i] + (1 - weight) * eye
            # P_i: each group of 2^i·b rows, read as [2, 2^i·b/2], transposed
            perm = rows.reshape(-1, 2, 2**i * b // 2).transpose(1, 2).reshape(-1)
            blocks = x[perm].reshape(n, b, *w.shape[1:])
            mixed = torch.einsum("n i j, n j ... -> n i ...", stage, blocks).reshape(w.shape)
            x = torch.empty_like(mixed)
            x[perm] = mixed
        scale = self._row_scale(w)
        return {"weight": (x if scale is None else scale * x) - w, "bias": None}
