"""Small kohya-layout LoRA files for the tiny fixture models, written by hand so that their
keys and shapes are those of real files (SD1 diffusers names, SDXL sgm names)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# (kohya module name, in_features, out_features) on the tiny fixtures
_SD1_MODULES = (
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 32),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v", 768, 32),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
)
_SDXL_MODULES = (
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048, 64),
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
    ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280),
)


def write_kohya_lora(
    path: Path, base: str = "sd1", seed: int = 0, rank: int = 2, trigger: str | None = None
) -> Path:
    """A kohya LoRA for `base` ("sd1" or "sdxl"); `trigger` goes into `ss_tag_frequency`."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, fan_in, fan_out in _SD1_MODULES if base == "sd1" else _SDXL_MODULES:
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.1
        tensors[f"{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.1
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    metadata = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank)}
    if trigger:
        metadata["ss_tag_frequency"] = json.dumps({"1_data": {trigger: 10, "picture": 3}})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_clip_l_lora(path: Path, seed: int = 0, rank: int = 2) -> Path:
    """A kohya SDXL LoRA on the CLIP-L encoder only (``lora_te1_``), tagged SDXL in its
    metadata: its record says sdxl, yet its tensors fit SD1's text encoder just as well."""
    generator = torch.Generator().manual_seed(seed)
    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    tensors = {
        f"{name}.lora_down.weight": torch.randn(rank, 768, generator=generator) * 0.1,
        f"{name}.lora_up.weight": torch.randn(768, rank, generator=generator) * 0.1,
        f"{name}.alpha": torch.tensor(float(rank)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return path
