"""LoRA files in real layouts, sized for the tiny fixture models (tests/fixtures/models.py).

Key names and shapes follow what kohya sd-scripts and the published LCM-LoRAs write: kohya
`lora_down`/`lora_up`/`alpha`, SD1 UNet in diffusers names, SDXL UNet in sgm names with
`lora_te1_`/`lora_te2_` text encoders, and the LCM-LoRA folder with UNet-only kohya-prefixed
diffusers names covering resnets and `time_emb_proj`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 4


def _pair(name: str, out_dim: int, in_dim: int, seed: int, conv: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(RANK, in_dim, *((3, 3) if conv else ()), generator=g) * 0.01
    up = torch.randn(out_dim, RANK, *((1, 1) if conv else ()), generator=g) * 0.01
    return {
        f"{name}.lora_down.weight": down,
        f"{name}.lora_up.weight": up,
        f"{name}.alpha": torch.tensor(float(RANK)),
    }


def kohya_sd1_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """SD1: UNet attention (context 768) and CLIP-L (768) layers."""
    att = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0"
    return {
        **_pair(f"{att}_attn2_to_k", 32, 768, seed),
        **_pair(f"{att}_attn2_to_v", 32, 768, seed + 1),
        **_pair(f"{att}_attn1_to_q", 32, 32, seed + 2),
        **_pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, seed + 3),
    }


def kohya_sdxl_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """SDXL: sgm-named UNet attention (context 2048), CLIP-L and CLIP-G layers."""
    att = "lora_unet_input_blocks_4_1_transformer_blocks_0"
    return {
        **_pair(f"{att}_attn2_to_k", 64, 2048, seed),
        **_pair(f"{att}_attn1_to_q", 64, 64, seed + 1),
        **_pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, seed + 2),
        **_pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280, seed + 3),
    }


def kohya_clip_l_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """SDXL kohya naming on CLIP-L only (``lora_te1_``): the same encoder SD1 uses."""
    return _pair("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, seed)


def lcm_sd1_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Like `latent-consistency/lcm-lora-sdv1-5`: whole UNet, no text encoder, no metadata."""
    out: dict[str, torch.Tensor] = {}
    for block in range(2):
        res = f"lora_unet_down_blocks_0_resnets_{block}"
        out |= _pair(f"{res}_conv1", 32, 32, seed + block, conv=True)
        out |= _pair(f"{res}_time_emb_proj", 32, 128, seed + 10 + block)
        att = f"lora_unet_down_blocks_0_attentions_{block}_transformer_blocks_0"
        out |= _pair(f"{att}_attn1_to_q", 32, 32, seed + 20 + block)
        out |= _pair(f"{att}_attn2_to_k", 32, 768, seed + 30 + block)
    return out


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def kohya_metadata(tags: dict[str, int], **extra: str) -> dict[str, str]:
    """kohya's header: `ss_tag_frequency` is {dataset folder: {tag: count}} as JSON."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": str(RANK),
        "ss_base_model_version": "sd_v1",
        "ss_tag_frequency": json.dumps({"10_zkstar": tags}),
        **extra,
    }


def write_lcm_folder(folder: Path) -> Path:
    return write(folder / "pytorch_lora_weights.safetensors", lcm_sd1_tensors()).parent
