"""Helpers that write LoRA state dicts in real key layouts for the tiny fixture models."""

from __future__ import annotations

import torch
from torch import nn

from loraworks.lora.keys import flatten
from tests.lora_parity.sgm import sdxl_sgm_name

ATTN = ("to_q", "to_k", "to_v", "to_out.0")
TE_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
KOHYA_TE_PREFIX = {
    ("sd1", "text_encoder"): "lora_te_",
    ("sd2", "text_encoder"): "lora_te_",
    ("sdxl", "text_encoder"): "lora_te1_",
    ("sdxl", "text_encoder_2"): "lora_te2_",
}


def targets(components, kinds=(nn.Linear,), suffixes=ATTN + TE_ATTN):
    """(component, module name as in real files, module) for every matching module."""
    out = []
    for comp, m in components.as_mapping().items():
        for n, mod in m.named_modules():
            if not isinstance(mod, kinds) or (suffixes and not n.endswith(suffixes)):
                continue
            name = n
            if comp.startswith("text") and not n.startswith("text_model."):
                name = "text_model." + n  # real files name the text_model level
            out.append((comp, name, n, mod))
    return out


def kohya_name(base: str, comp: str, name: str, sgm: bool = True) -> str:
    if comp == "unet":
        if base == "sdxl" and sgm:
            name = sdxl_sgm_name(name)
        return "lora_unet_" + flatten(name)
    return KOHYA_TE_PREFIX[(base, comp)] + flatten(name)


def kohya_lora(components, rank=4, alpha=2.0, seed=0, scale=0.1, **kw) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA on the attention linears of every component (SDXL: sgm names)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for comp, name, _, mod in targets(components, **kw):
        key = kohya_name(components.base, comp, name)
        w = mod.weight
        sd[key + ".lora_down.weight"] = torch.randn(rank, *w.shape[1:], generator=g) * scale
        up_shape = (w.shape[0], rank) + ((1, 1) if w.dim() == 4 else ())
        sd[key + ".lora_up.weight"] = torch.randn(*up_shape, generator=g) * scale
        sd[key + ".alpha"] = torch.tensor(float(alpha))
    return sd


def snapshot(components) -> dict[str, torch.Tensor]:
    return {
        f"{c}.{k}": v.detach().clone()
        for c, m in components.as_mapping().items()
        for k, v in m.state_dict().items()
    }


def assert_bit_exact(components, snap) -> None:
    now = snapshot(components)
    assert now.keys() == snap.keys()
    bad = [k for k in snap if not (now[k].dtype == snap[k].dtype and torch.equal(now[k], snap[k]))]
    assert not bad, f"{len(bad)} tensors changed, e.g. {bad[:3]}"
