"""`extract`: a LoRA/LoCon from the difference of two main models of the same base.

For every ``nn.Linear`` and ``nn.Conv2d`` of the UNet and text encoders, D = W_tuned − W_base
(in float32); modules with max|D| ≤ ``min_diff`` are left out (kohya
``extract_lora_from_models.py``'s ``--min_diff``; default 0: any difference counts). D is then
SVD-truncated like `resize` (scale 1, α = rank; a 3×3 conv becomes a LoCon layer). When the
tuned model is the base with a LoRA of rank r baked in, D = ΔW up to the rounding of the bake,
so any rank ≥ r gives it back. Norm layers, embeddings and biases are not extracted.

Both models must have the same base and the same architecture (components, module names and
shapes), checked before any work.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..components import components_of, model_base
from ..model import LoRA
from .delta import Delta, SvdMethod, truncate
from .errors import IncompatibleModels, LoRAToolError
from .rank import RankRule
from .result import LayerReport, Progress, ToolResult, tool_note


def _modules(comp: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in comp.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def _check_same(base: dict[str, nn.Module], tuned: dict[str, nn.Module]) -> str:
    b_base, t_base = model_base(base), model_base(tuned)
    if b_base != t_base:
        raise IncompatibleModels(
            f"the models have different bases ({b_base} and {t_base}): a LoRA is extracted "
            "from two models of one base"
        )
    if set(base) != set(tuned):
        raise IncompatibleModels(
            f"the models have different parts ({sorted(base)} and {sorted(tuned)})"
        )
    for comp in base:
        a = {n: tuple(p.shape) for n, p in base[comp].named_parameters()}
        b = {n: tuple(p.shape) for n, p in tuned[comp].named_parameters()}
        if a != b:
            diff = sorted(set(a.items()) ^ set(b.items()))[:3]
            raise IncompatibleModels(
                f"the {comp}s have different architectures (e.g. {diff}); a LoRA is extracted "
                "from two models of one architecture"
            )
    if b_base is None:
        raise IncompatibleModels("cannot tell the models' base (sd1, sd2 or sdxl)")
    return b_base


@torch.no_grad()
def extract(
    base_model: Any,
    tuned_model: Any,
    rule: RankRule,
    *,
    min_diff: float = 0.0,
    svd: SvdMethod = "full",
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> ToolResult:
    """A LoRA with ``tuned ≈ base + ΔW`` (pipelines or ``{"unet": m, ...}`` mappings)."""
    if not math.isfinite(min_diff) or min_diff < 0:
        raise LoRAToolError(f"min_diff must be a number ≥ 0, got {min_diff}")
    base, tuned = components_of(base_model), components_of(tuned_model)
    found = _check_same(base, tuned)
    pairs = []
    for comp in base:
        tmods = _modules(tuned[comp])
        for name, bmod in _modules(base[comp]).items():
            pairs.append((f"{comp}.{name}", bmod.weight, tmods[name].weight))
    changed, dims = [], {}
    for target, wb, wt in pairs:
        if float((wt.float() - wb.float()).abs().max()) > min_diff:
            changed.append((target, wb, wt))
            dims[target] = min(wb.shape[0], math.prod(wb.shape[1:]))
    rule.check_dims(dims)
    dtype = dtype or (pairs[0][2].dtype if pairs else torch.float32)
    reports: list[LayerReport] = []
    layers = {}
    for i, (target, wb, wt) in enumerate(changed):
        d = (wt.float() - wb.float()).reshape(wb.shape[0], -1)
        new, cut = truncate(Delta(tuple(wb.shape), dense=d), rule, 1.0, dtype, svd)
        if new is not None:
            layers[target] = new
            reports.append(LayerReport(target, cut.rank, cut.retained, cut.error))
        if progress:
            progress(i + 1, len(changed), target)
    if not layers:
        raise LoRAToolError(
            f"the models do not differ (by more than min_diff={min_diff:g}): nothing to extract"
        )
    meta = tool_note("extract", rule=rule.describe(), min_diff=min_diff)
    lora = LoRA(layers=layers, base=found, format="kohya", metadata=meta, name="extracted")
    return ToolResult(lora, reports, dropped=[t for t, _, _ in pairs if t not in dims])
