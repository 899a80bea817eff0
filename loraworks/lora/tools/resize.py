"""`resize`: every layer's ΔW cut to a fixed rank or by a dynamic rule (kohya ``resize_lora.py``).

Each layer's exact ΔW (`delta.delta_of`; any linear kind, so LoHa/LoKr/full come out as
LoRA/LoCon) is decomposed, ΔW = U Σ Vᵀ, and the first k values kept (`rank.RankRule`). By
Eckart–Young the result is the best rank-k approximation in Frobenius norm and its error is
exactly ‖ΔW − ΔW_k‖_F = √(Σ_{i>k} σᵢ²). The layer's scale α/r is kept (α′ = (α/r)·k, as
kohya does), so the file reads the same at the same weight. Kinds whose ΔW depends on the
model (DoRA, IA³, OFT, GLoRA) are refused before any work: bake, then extract.
"""

from __future__ import annotations

import math

import torch

from ..model import LoRA
from .delta import SvdMethod, delta_of, layer_dims, truncate
from .errors import UnsupportedKind
from .rank import RankRule
from .result import LayerReport, Progress, ToolResult, tensor_dtype, tool_note


def refuse_nonlinear(layers: dict) -> None:
    bad = [f"{t} ({layer.kind})" for t, layer in layers.items() if not layer.linear]
    if bad:
        raise UnsupportedKind(
            f"{len(bad)} layer(s) have a ΔW that depends on the model's weights: "
            f"{', '.join(bad[:5])}; bake the LoRA into a model (`loraworks lora bake`) and "
            "`extract` one from the result"
        )


def resize(
    lora: LoRA,
    rule: RankRule,
    *,
    svd: SvdMethod = "full",
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> ToolResult:
    """``lora`` with every layer re-decomposed by ``rule`` (factors in ``dtype``, default the
    source's)."""
    refuse_nonlinear(lora.layers)
    rule.check_dims({t: d for t, ly in lora.layers.items() if (d := layer_dims(ly)) is not None})
    dtype = dtype or tensor_dtype(lora.layers.values())
    result = ToolResult(lora=lora)
    layers = {}
    total = len(lora.layers)
    for i, (target, layer) in enumerate(lora.layers.items()):
        s = float(getattr(layer, "scale", 1.0))
        scale = s if s > 0 and math.isfinite(s) else 1.0
        new, cut = truncate(delta_of(layer, target), rule, scale, dtype, svd)
        if new is None:
            result.dropped.append(target)
        else:
            layers[target] = new
            before = getattr(layer, "rank", None)
            result.layers.append(LayerReport(target, cut.rank, cut.retained, cut.error, before))
        if progress:
            progress(i + 1, total, target)
    meta = {**lora.metadata, **tool_note("resize", rule=rule.describe(), source=lora.name)}
    result.lora = LoRA(
        layers=layers,
        base=lora.base,
        format="kohya",
        metadata=meta,
        name=lora.name,
        compatible_bases=lora.compatible_bases,
    )
    return result
