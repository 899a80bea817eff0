"""Independent truths for the tool tests: ΔW computed by hand from a kohya state dict, and the
effect of a stack measured on a patched model."""

from __future__ import annotations

import torch

from loraworks.lora import apply_loras
from tests.lora.util import kohya_name, snapshot, targets


def hand_delta(sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """α/r · up @ down of one kohya module, in float64, as a matrix [out, in·k·k]."""
    up = sd[key + ".lora_up.weight"].double().flatten(1)
    down = sd[key + ".lora_down.weight"].double().flatten(1)
    alpha = float(sd[key + ".alpha"]) if key + ".alpha" in sd else down.shape[0]
    return alpha / down.shape[0] * up @ down


def module_keys(components) -> dict[str, str]:
    """kohya key (as tests/lora/util writes it) → engine target of every attention linear."""
    out = {}
    for comp, name, n, _ in targets(components):
        out[kohya_name(components.base, comp, name)] = f"{comp}.{n}"
    return out


def patched(components, stack) -> dict[str, torch.Tensor]:
    with apply_loras(components.as_mapping(), stack):
        return snapshot(components)


def rel_to_effect(components, got_stack, want_stack) -> float:
    """‖patched(got) − patched(want)‖ / ‖patched(want) − W‖ over every parameter."""
    w = snapshot(components)
    got, want = patched(components, got_stack), patched(components, want_stack)
    num = sum(float((got[k].double() - want[k].double()).pow(2).sum()) for k in w)
    den = sum(float((want[k].double() - w[k].double()).pow(2).sum()) for k in w)
    assert den > 0
    return (num / den) ** 0.5
