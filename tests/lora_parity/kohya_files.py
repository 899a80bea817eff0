"""kohya-layout files written by hand (LoRA and LoCon; SDXL with sgm names); the reference is
diffusers `load_lora_weights` + `fuse_lora`, checked against the kohya formula."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.fixtures.models import Components
from tests.lora_parity.common import (
    SEED,
    Produced,
    Weight,
    component_weight,
    fresh,
    kohya_name,
    kohya_root,
    kohya_unet_path,
    save_safetensors,
)
from tests.lora_parity.inputs import Outputs, forward_all

_LEVELS = r"(down_blocks\.1|mid_block|up_blocks\.1)\..*"
HAND_TARGETS = {
    "kohya_lora": _LEVELS + r"\.(to_q|to_k|to_v|to_out\.0|proj_in|proj_out)",
    "kohya_locon": _LEVELS
    + r"\.(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2"
    r"|conv_shortcut|time_emb_proj|downsamplers\.0\.conv|upsamplers\.0\.conv)",
}
HAND_TE_TARGETS = r".*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"


@dataclass
class HandLayer:
    component: str
    path: str  # relative to the kohya root (TE paths start with `text_model.`)
    delta: torch.Tensor  # (α/r)·up@down in the weight's shape


def _roots(comps: Components) -> dict[str, torch.nn.Module]:
    return {c: (m if c == "unet" else kohya_root(m)) for c, m in comps.as_mapping().items()}


def hand_kohya(base: str, kind: str, seed: int = 5) -> tuple[dict, list[HandLayer]]:
    """kohya `lora_down`/`lora_up`/`alpha` tensors for every targeted Linear/Conv2d: rank 4,
    alpha 2 (network_alpha) and alpha 1 on 3x3 convs (conv_alpha), as kohya writes them.
    (diffusers misreads alphas that vary from layer to layer, so they are kept per kind.)"""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    layers: list[HandLayer] = []
    for component, root in _roots(fresh(base)).items():
        pattern = HAND_TARGETS[kind] if component == "unet" else HAND_TE_TARGETS
        for path, module in root.named_modules():
            if not re.fullmatch(pattern, path):
                continue
            w = module.weight
            rank, alpha = 4, (1.0 if w.dim() == 4 and w.shape[-1] == 3 else 2.0)
            down = 0.1 * torch.randn(rank, *w.shape[1:], generator=gen)
            up = 0.1 * torch.randn(w.shape[0], rank, *([1] * (w.dim() - 2)), generator=gen)
            key_path = kohya_unet_path(base, path) if component == "unet" else path
            name = kohya_name(base, component, key_path)
            sd[f"{name}.lora_down.weight"] = down
            sd[f"{name}.lora_up.weight"] = up
            sd[f"{name}.alpha"] = torch.tensor(alpha)
            delta = (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
            layers.append(HandLayer(component, path, delta))
    return sd, layers


def hand_formula_reference(base: str, layers: list[HandLayer]) -> Callable[[Weight], Outputs]:
    """W + m·(α/r)·up@down on a fresh model: the kohya formula, computed here."""

    def reference(weight: Weight) -> Outputs:
        comps = fresh(base)
        roots = _roots(comps)
        with torch.no_grad():
            for layer in layers:
                m = component_weight(weight, layer.component)
                roots[layer.component].get_submodule(layer.path).weight.add_(m * layer.delta)
        return forward_all(comps.as_mapping())

    return reference


def diffusers_reference(base: str, path: Path, folder: Path) -> Callable[[Weight], Outputs]:
    """diffusers `load_lora_weights`, per-component weights through `set_adapters`, then
    `fuse_lora` (which merges at the scale `set_adapters` set)."""
    from tests.fixtures.models import build_pipeline

    pipe = build_pipeline(base, folder / f"pipe_{path.stem}", "tiny", SEED)
    pipe.load_lora_weights(str(path), adapter_name="x")
    models = {c: getattr(pipe, c, None) for c in ("unet", "text_encoder", "text_encoder_2")}
    models = {c: m for c, m in models.items() if m is not None}

    def reference(weight: Weight) -> Outputs:
        pipe.set_adapters(["x"], [{c: component_weight(weight, c) for c in models}])
        pipe.fuse_lora(components=list(models), lora_scale=1.0, adapter_names=["x"])
        out = forward_all(models)
        pipe.unfuse_lora(components=list(models))
        return out

    return reference


def kohya_hand_path(base: str, kind: str, folder: Path) -> tuple[Path, list[HandLayer]]:
    """Write a hand-made kohya file (SDXL with sgm names and `ss_base_model_version`)."""
    sd, layers = hand_kohya(base, kind)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": "4"}
    if base == "sdxl":
        metadata["ss_base_model_version"] = "sdxl_base_v1-0"
    return save_safetensors(folder / f"{kind}_{base}.safetensors", sd, metadata), layers


def kohya_hand_file(base: str, kind: str, folder: Path) -> Produced:
    path, layers = kohya_hand_path(base, kind, folder)
    components = tuple(dict.fromkeys(layer.component for layer in layers))
    produced = Produced(
        kind, base, path, diffusers_reference(base, path, folder), targets=components
    )
    produced.notes["hand_reference"] = hand_formula_reference(base, layers)
    return produced
