"""`merge`: several LoRAs at their weights into one.

For each target module, ΔW = Σᵢ wᵢ·ΔWᵢ (the patcher's sum; it never depends on the order).

* **concat** (exact, plain LoRA/LoCon layers of any ranks and alphas): the scales go into the
  up factors and the factors are stacked, ``up = [w₁s₁·up₁ | w₂s₂·up₂]``,
  ``down = [down₁; down₂]``, α = r₁ + r₂ (scale 1), so ``up @ down = Σ wᵢ sᵢ upᵢ downᵢ``:
  the same sum the patcher forms, up to float rounding. kohya's ``merge_lora.py`` adds the
  factors themselves and so needs equal ranks (kohya_ss #1970). Keep the factors in float32
  (``dtype``) for an exact result: scaling fp16 factors rounds them.
* **rank / dynamic** (any linear kind): the sum is SVD-truncated like `resize` (scale 1), as
  kohya's ``svd_merge_lora.py``; plain LoRA sums stay factored (never an m×n matrix).

LoRAs must share a base (their ``compatible_bases`` must meet); a LoRA at weight 0 is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..layers import Layer, LoRALayer, NormLayer
from ..model import LoRA
from .delta import Delta, SvdMethod, combine, delta_of, layer_dims, truncate
from .errors import IncompatibleModels, LoRAToolError, UnsupportedKind
from .rank import RankRule
from .resize import refuse_nonlinear
from .result import LayerReport, Progress, ToolResult, tensor_dtype, tool_note


def _bases(stack: Sequence[tuple[LoRA, float]]) -> tuple[str, frozenset[str]]:
    common = frozenset.intersection(*(lora.compatible_bases for lora, _ in stack))
    if not common:
        shown = ", ".join(f"{lora.name or '?'} ({lora.base})" for lora, _ in stack)
        raise IncompatibleModels(f"these LoRAs are for different base models: {shown}")
    first = stack[0][0].base
    return (first if first in common else sorted(common)[0]), common


def _concat_layer(delta: Delta, dtype: torch.dtype) -> Layer:
    if delta.is_vector:
        bias = None if delta.bias is None else delta.bias.to(dtype)
        return NormLayer(delta.dense.to(dtype), bias)
    r, shape = delta.up.shape[1], delta.shape
    up, down = delta.up, delta.down
    if len(shape) == 4:
        up, down = up.reshape(shape[0], r, 1, 1), down.reshape(r, *shape[1:])
    bias = None if delta.bias is None else delta.bias.to(dtype)
    return LoRALayer(up.to(dtype), down.to(dtype), alpha=float(r), up_bias=bias)


def merge(
    stack: Sequence[tuple[LoRA, float]],
    rule: RankRule | None = None,
    *,
    svd: SvdMethod = "full",
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> ToolResult:
    """One LoRA from ``[(lora, weight), ...]``: concatenated (``rule`` None) or SVD-truncated."""
    if not stack:
        raise LoRAToolError("nothing to merge")
    for lora, w in stack:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise LoRAToolError(f"{lora.name}: weight must be a finite number, got {w!r}")
    base, common = _bases(stack)
    stack = [(lora, float(w)) for lora, w in stack if w != 0]
    if not stack:
        raise LoRAToolError("every weight is 0: nothing to merge")
    by_target: dict[str, list[tuple[Layer, float]]] = {}
    for lora, w in stack:
        refuse_nonlinear(lora.layers)
        for target, layer in lora.layers.items():
            by_target.setdefault(target, []).append((layer, w))
    if rule is None:
        bad = [
            f"{t} ({ly.kind})"
            for t, items in by_target.items()
            for ly, _ in items
            if not _concatenable(ly)
        ]
        if bad:
            raise UnsupportedKind(
                f"--concat is exact for plain LoRA/LoCon layers only; {', '.join(bad[:5])}"
                f"{' …' if len(bad) > 5 else ''} are not: merge with --rank or --dynamic"
            )
    else:
        rule.check_dims(
            {t: d for t, items in by_target.items() if (d := layer_dims(items[0][0])) is not None}
        )
    dtype = dtype or _common_dtype(stack)
    result = ToolResult(lora=stack[0][0])
    layers: dict[str, Layer] = {}
    for i, (target, items) in enumerate(by_target.items()):
        delta = combine([delta_of(ly, target).scaled(w) for ly, w in items], target)
        before = sum(getattr(ly, "rank", 0) for ly, _ in items) or None
        if rule is None:
            layers[target] = _concat_layer(delta, dtype)
            rank = delta.up.shape[1] if delta.factored else 1
            result.layers.append(LayerReport(target, rank, rank_before=before))
        else:
            new, cut = truncate(delta, rule, 1.0, dtype, svd)
            if new is None:
                result.dropped.append(target)
            else:
                layers[target] = new
                result.layers.append(LayerReport(target, cut.rank, cut.retained, cut.error, before))
        if progress:
            progress(i + 1, len(by_target), target)
    how = "concat" if rule is None else rule.describe()
    sources = [f"{lora.name}:{w:g}" for lora, w in stack]
    result.lora = LoRA(
        layers=layers,
        base=base,
        format="kohya",
        metadata=tool_note("merge", rule=how, sources=sources),
        name="+".join(lora.name or "?" for lora, _ in stack),
        compatible_bases=common,
    )
    return result


def _concatenable(layer: Layer) -> bool:
    plain = isinstance(layer, LoRALayer) and layer.mid is None and layer.sparse is None
    shape = layer.delta_shape()
    return plain or (layer.kind in ("norm", "full") and shape is not None and len(shape) == 1)


def _common_dtype(stack: Sequence[tuple[LoRA, float]]) -> torch.dtype:
    dtypes = {tensor_dtype(lora.layers.values()) for lora, _ in stack}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32
