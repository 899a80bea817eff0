"""BOFT as PEFT saves it: ``boft_R`` [N, D, H, H] (N butterfly stages of D blocks of H input
features, D·H = fan-in) and ``boft_s`` (one scale per output row; [out, 1] on a linear,
[1, out] on a conv). LyCORIS's BOFT (``oft.py``) turns output rows instead.

    R = (I − S)(I + S)⁻¹,  S = (B − Bᵀ)/2          per block (PEFT's Cayley transform)
    M_i = P_i · blockdiag(R_i) · P_iᵀ               stage i
    W' = (W · (M_{N−1} ⋯ M_0)ᵀ) ⊙ s                 W read as [out, in·kh·kw]

P_i is PEFT's butterfly permutation, rebuilt from the shapes: stage i cuts the input into
D/2^i groups of 2^i·H features, splits each group into chunks of H/2 and puts the even-numbered
chunks first (with N = 1 there is no permutation: one stage is block-diagonal OFT). The user
weight m interpolates PEFT's merge, which has no weight of its own: ΔW = m·(W' − W). The
rotations are applied to W group by group; the dense fan-in² matrix PEFT builds (530 MB for a
1280-channel 3×3 conv) is never formed.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, Tensor, f32, require


def butterfly_perm(n: int, blocks: int, block: int, stage: int) -> Tensor:
    """PEFT's permutation of stage `stage` over `n` features (`blocks` blocks of `block`):
    within each group of 2^stage·block features, chunks of block/2, even ones first."""
    group = block * 2**stage
    chunks = torch.arange(group).reshape(-1, block // 2)
    order = torch.cat([chunks[0::2], chunks[1::2]]).reshape(-1)
    return (torch.arange(0, n, group)[:, None] + order).reshape(-1)


class PeftBOFTLayer(Layer):
    kind = "boft"
    leaves = frozenset({"boft_R", "boft_s"})
    triggers = ("boft_R",)
    spellings = MappingProxyType({leaf: leaf for leaf in leaves})
    linear = False

    def __init__(self, blocks: Tensor, scale: Tensor):
        if blocks.dim() != 4 or blocks.shape[2] != blocks.shape[3] or 0 in blocks.shape:
            shape = tuple(blocks.shape)
            raise LoRAFormatError(f"boft_R must be [stages, blocks, b, b], got {shape}")
        stages, n_blocks, b = (int(x) for x in blocks.shape[:3])
        if stages > 1 and (b % 2 or n_blocks % 2 ** (stages - 1)):
            raise LoRAFormatError(
                f"{stages} butterfly stages need an even block size and a block count divisible "
                f"by {2 ** (stages - 1)}; got {n_blocks} blocks of {b}"
            )
        if scale.dim() != 2 or 1 not in scale.shape:
            raise LoRAFormatError(f"boft_s must be [out, 1] or [1, out], got {tuple(scale.shape)}")
        self.blocks = blocks
        self.scale_rows = scale

    @classmethod
    def from_state_dict(cls, leaves, convention: Convention):
        blocks, scale = require(leaves, "boft_R", "boft_s")
        return cls(blocks, scale)

    def tensors(self):
        return {"boft_R": self.blocks, "boft_s": self.scale_rows}

    def in_features(self) -> int | None:
        return int(self.blocks.shape[1] * self.blocks.shape[2])

    def out_features(self) -> int | None:
        return int(self.scale_rows.numel())

    def check(self, weight_shape) -> str | None:
        fan_in = math.prod(weight_shape[1:])
        if fan_in != self.in_features() or weight_shape[0] != self.out_features():
            stages, n, b = (int(x) for x in self.blocks.shape[:3])
            return (
                f"BOFT of {stages} stage(s) of {n} blocks of {b} inputs and {self.out_features()} "
                f"output scales does not fit weight {weight_shape}"
            )
        return None

    def rotation(self, device) -> Tensor:
        """R per stage and block, fp32 [N, D, H, H]."""
        blocks = f32(self.blocks, device)
        skew = (blocks - blocks.transpose(-1, -2)) / 2
        eye = torch.eye(blocks.shape[-1], device=device)
        return torch.linalg.solve(eye + skew, eye - skew, left=False)

    def residuals(self, params, weight):
        w = params["weight"]
        stages, n_blocks, b = (int(x) for x in self.blocks.shape[:3])
        rot = self.rotation(w.device)
        rows = w.reshape(w.shape[0], -1)
        n = rows.shape[1]
        x = rows
        for i in range(stages):
            perm = butterfly_perm(n, n_blocks, b, i).to(w.device) if stages > 1 else None
            y = x if perm is None else x[:, torch.argsort(perm)]  # Pᵀ
            y = torch.einsum("d a c, o d c -> o d a", rot[i], y.reshape(-1, n_blocks, b))
            y = y.reshape(x.shape)
            x = y if perm is None else y[:, perm]  # P
        turned = x * f32(self.scale_rows, w.device).reshape(-1, 1)
        return {"weight": ((turned - rows) * weight).reshape(w.shape), "bias": None}
