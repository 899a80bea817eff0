"""Kohya-format LoRA files for the tiny fixture pipelines (random weights, diffusers module
names as LCM-LoRA files use them), and a models root holding tiny SD1/SD2/SDXL models."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from loraworks.models import ModelManager
from tests.fixtures.models import BASES, build_pipeline

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
_TE = ("q_proj", "v_proj")
_TE_PREFIX = {"text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
_SDXL_TE_PREFIX = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def _targets(pipe, lcm: bool) -> dict[str, torch.nn.Module]:
    """kohya layer name → module, for a concept LoRA (attention + text encoders) or an
    LCM-LoRA (UNet only: attention, resnet convolutions, time embedding projections)."""
    unet_suffixes = _ATTENTION + (("time_emb_proj", "conv1", "conv2") if lcm else ())
    out = {
        f"lora_unet_{name.replace('.', '_')}": module
        for name, module in pipe.unet.named_modules()
        if name.endswith(unet_suffixes)
    }
    if lcm:
        return out
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    for comp, prefix in (_SDXL_TE_PREFIX if sdxl else _TE_PREFIX).items():
        te = getattr(pipe, comp, None)
        for name, module in te.named_modules() if te is not None else ():
            if name.endswith(_TE):
                path = name if name.startswith("text_model.") else f"text_model.{name}"
                out[f"{prefix}_{path.replace('.', '_')}"] = module
    return out


def write_lora(pipe, path: Path, seed: int, lcm: bool = False, rank: int = 2) -> Path:
    """A kohya LoRA touching `pipe`'s attention (and text encoders unless `lcm`)."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, module in _targets(pipe, lcm).items():
        w = module.weight
        inner = w.shape[1:] if w.ndim == 4 else (w.shape[1],)
        down_shape = (rank, inner[0], *inner[1:]) if w.ndim == 4 else (rank, inner[0])
        up_shape = (w.shape[0], rank, 1, 1) if w.ndim == 4 else (w.shape[0], rank)
        tensors[f"{key}.lora_down.weight"] = torch.randn(down_shape, generator=gen) * 0.5
        tensors[f"{key}.lora_up.weight"] = torch.randn(up_shape, generator=gen) * 0.5
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {} if lcm else {"ss_network_dim": str(rank), "ss_network_alpha": str(rank)}
    save_file(tensors, str(path), metadata)
    return path


def build_root(root: Path, work: Path) -> ModelManager:
    """A models root with `tiny-<base>` main models and LoRAs `<base>-a`, `<base>-b`,
    `<base>-c` (concept) and `<base>-lcm` (LCM-LoRA layout) for every base."""
    mm = ModelManager.open(root, scan=False)
    for i, base in enumerate(BASES):
        pipe = build_pipeline(base, work / base)
        folder = work / f"tiny-{base}"
        pipe.save_pretrained(folder)
        mm.install(folder, name=f"tiny-{base}", type="main")
        for j, tag in enumerate("abc"):
            path = write_lora(pipe, work / f"{base}-{tag}.safetensors", seed=10 * i + j)
            mm.install(path, name=f"{base}-{tag}", type="lora")
        path = write_lora(pipe, work / f"{base}-lcm.safetensors", seed=10 * i + 9, lcm=True)
        mm.install(path, name=f"{base}-lcm", type="lora")
    return mm
