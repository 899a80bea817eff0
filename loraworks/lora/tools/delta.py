"""One module's ΔW as the tools handle it, its SVD, and the LoRA layer that carries a truncation.

Every linear kind already computes its exact ΔW (`Layer.residuals` at weight 1 against a zero
weight, since linear kinds ignore W). A plain LoRA's ΔW = s·up@down is kept *factored*:

    up = Q_u R_u,  downᵀ = Q_d R_d            (reduced QR, r columns each)
    R_u R_dᵀ = u Σ vᵀ                          (an r×r SVD)
    ΔW = (Q_u u) Σ (Q_d v)ᵀ                    exact SVD, O((m+n)·r²) instead of O(m·n·min(m,n))

so resizing or merging LoRAs never forms an m×n matrix. Other kinds (LoHa, LoKr, full, Tucker
LoRA, a sparse part) go dense: ``torch.linalg.svd`` or, on request, ``torch.svd_lowrank``
(randomised, Halko et al. 2011; faster on large layers, approximate).

A truncation to k values becomes a LoRA layer with a chosen scale s′ (kept from the source in
`resize`, 1 elsewhere): ``up = U_k·√(Σ_k/s′)``, ``down = √(Σ_k/s′)·V_kᵀ``, ``alpha = s′·k``,
so ``alpha/k · up@down = U_k Σ_k V_kᵀ``. A conv ΔW [o, i, kh, kw] is the matrix [o, i·kh·kw];
its kernel goes to ``down`` and ``up`` is 1×1 (a LoCon). A Δb rides along as ``lora_up.bias``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..layers import Layer, LoRALayer, NormLayer
from .errors import UnsupportedKind
from .rank import RankRule

Tensor = torch.Tensor
SvdMethod = Literal["full", "lowrank"]
#: extra columns `torch.svd_lowrank` samples beyond the rank asked for
OVERSAMPLE = 8


@dataclass
class Delta:
    """ΔW of one module at weight 1, fp32: factored (``up @ down``) or ``dense``, as a matrix
    [out, in·kh·kw] with the natural ``shape``; ``bias`` is Δb. A 1-D ΔW (a norm layer) is
    ``dense`` with ``shape`` of one dimension."""

    shape: tuple[int, ...]
    up: Tensor | None = None
    down: Tensor | None = None
    dense: Tensor | None = None
    bias: Tensor | None = None

    @property
    def factored(self) -> bool:
        return self.up is not None

    @property
    def is_vector(self) -> bool:
        return len(self.shape) == 1

    @property
    def dims(self) -> int:
        """The most singular values the matrix can have."""
        return min(self.shape[0], math.prod(self.shape[1:])) if not self.is_vector else 1

    def matrix(self) -> Tensor:
        return self.dense if self.dense is not None else self.up @ self.down

    def scaled(self, weight: float) -> Delta:
        """ΔW·weight (on ``up`` when factored)."""
        bias = None if self.bias is None else self.bias * weight
        if self.factored:
            return Delta(self.shape, up=self.up * weight, down=self.down, bias=bias)
        return Delta(self.shape, dense=self.dense * weight, bias=bias)


def layer_dims(layer: Layer) -> int | None:
    """min(rows, columns) of the layer's ΔW matrix; None for a vector or shapeless kind."""
    shape = layer.delta_shape()
    if shape is None or len(shape) < 2:
        return None
    return min(int(shape[0]), math.prod(int(d) for d in shape[1:]))


def delta_of(layer: Layer, target: str) -> Delta:
    """The layer's exact ΔW at weight 1. Kinds whose ΔW depends on the model's weight (DoRA,
    IA³, OFT, GLoRA) are refused: they only have a ΔW against a given model."""
    shape = layer.delta_shape()
    if not layer.linear or shape is None:
        raise UnsupportedKind(
            f"{target}: a {layer.kind} layer's ΔW depends on the model's weights; bake it into "
            "a model (`loraworks lora bake`) and `extract` a LoRA from the result"
        )
    shape = tuple(int(d) for d in shape)
    plain = isinstance(layer, LoRALayer) and layer.mid is None and layer.sparse is None
    if plain:
        up = layer.up.detach().float().flatten(1) * layer.scale
        bias = None if layer.up_bias is None else layer.up_bias.detach().float() * layer.scale
        return Delta(shape, up=up, down=layer.down.detach().float().flatten(1), bias=bias)
    zero_b = torch.zeros(shape[0]) if layer.touches_bias else None
    res = layer.residuals({"weight": torch.zeros(shape), "bias": zero_b}, 1.0)
    dw, db = res.get("weight"), res.get("bias")
    dw = torch.zeros(shape) if dw is None else dw.float()
    dense = dw.reshape(shape) if len(shape) == 1 else dw.reshape(shape[0], -1)
    return Delta(shape, dense=dense, bias=None if db is None else db.float().reshape(-1))


def combine(deltas: list[Delta], target: str) -> Delta:
    """Σ ΔW: factors side by side when every part is factored (the sum stays exact and low
    rank: [up₁ | up₂] @ [down₁; down₂]), else the dense sum."""
    shapes = {d.shape for d in deltas}
    if len(shapes) > 1:
        raise UnsupportedKind(f"{target}: the layers have different shapes {sorted(shapes)}")
    bias = [d.bias for d in deltas if d.bias is not None]
    total_bias = torch.stack(bias).sum(0) if bias else None
    if all(d.factored for d in deltas):
        up = torch.cat([d.up for d in deltas], dim=1)
        down = torch.cat([d.down for d in deltas], dim=0)
        return Delta(deltas[0].shape, up=up, down=down, bias=total_bias)
    dense = torch.stack([d.matrix() for d in deltas]).sum(0)
    return Delta(deltas[0].shape, dense=dense, bias=total_bias)


def svd(delta: Delta, rule: RankRule, method: SvdMethod = "full") -> tuple[Tensor, Tensor, Tensor]:
    """U, S (descending), Vh of the ΔW matrix: exact through the factors when factored."""
    if delta.factored:
        qu, ru = torch.linalg.qr(delta.up)
        qd, rd = torch.linalg.qr(delta.down.T)
        u, s, vh = torch.linalg.svd(ru @ rd.T, full_matrices=False)
        return qu @ u, s, vh @ qd.T
    m = delta.dense
    if method == "lowrank":
        q = min(min(m.shape), (rule.rank or min(m.shape)) + OVERSAMPLE)
        u, s, v = torch.svd_lowrank(m, q=q, niter=2)
        return u, s, v.T
    return torch.linalg.svd(m, full_matrices=False)


@dataclass
class Truncation:
    """What a layer kept: its new rank, the fraction of ‖ΔW‖_F kept and the error ‖ΔW − ΔW_k‖_F."""

    rank: int
    retained: float
    error: float


def truncate(
    delta: Delta, rule: RankRule, scale: float, dtype: torch.dtype, method: SvdMethod = "full"
) -> tuple[Layer | None, Truncation]:
    """The LoRA (LoCon) layer of ΔW truncated by ``rule``, its factors in ``dtype`` (``scale``
    > 0); a vector ΔW (norm layer) is kept as it is; a ΔW of zeros gives no layer."""
    if delta.is_vector:
        b = None if delta.bias is None else delta.bias.to(dtype)
        return NormLayer(delta.dense.to(dtype), b), Truncation(1, 1.0, 0.0)
    u, s, vh = svd(delta, rule, method)
    if not bool((s > 0).any()):
        return None, Truncation(0, 1.0, 0.0)
    k = rule.choose(s)
    energy = float((s.double() ** 2).sum())
    kept = float((s[:k].double() ** 2).sum())
    error = math.sqrt(max(energy - kept, 0.0)) if delta.factored or method == "full" else None
    if error is None:  # randomised SVD: S is not the whole spectrum; measure
        approx = (u[:, :k] * s[:k]) @ vh[:k]
        error = float(torch.linalg.matrix_norm(delta.matrix() - approx))
        energy = float(torch.linalg.matrix_norm(delta.matrix())) ** 2
    root = torch.sqrt(s[:k] / scale)
    up, down = u[:, :k] * root, root[:, None] * vh[:k]
    shape = delta.shape
    if len(shape) == 4:
        up, down = up.reshape(shape[0], k, 1, 1), down.reshape(k, *shape[1:])
    bias = None if delta.bias is None else (delta.bias / scale).to(dtype)
    layer = LoRALayer(up.to(dtype), down.to(dtype), alpha=scale * k, up_bias=bias)
    retained = math.sqrt(kept / energy) if energy > 0 else 1.0
    return layer, Truncation(k, retained, error)
