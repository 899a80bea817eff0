"""A diffusers SD1/SD2/SDXL pipeline as one ``.safetensors`` file in the original layout.

The layout is the one published checkpoints (CompVis, Stability, A1111/Forge/ComfyUI exports)
use, and what `loraworks.models.singlefile` reads back:

* UNet ``model.diffusion_model.*``: sgm block names (`keys.diffusers_to_sgm`, numbered from the
  UNet's own config: any level count and resnets per level).
* VAE ``first_stage_model.*``: ``encoder.down.<i>.block.<j>``, ``decoder.up.<n-1-i>`` (the
  decoder counts its levels from the bottom), ``mid.block_1/2``, ``mid.attn_1`` with its
  ``q/k/v/proj_out`` as 1×1 convolutions (``[out, in, 1, 1]``), ``nin_shortcut``,
  ``norm_out``.
* CLIP-L (SD1 ``cond_stage_model.transformer.``, SDXL ``conditioner.embedders.0.transformer.``):
  the HF names under ``text_model.``, plus the int64 ``position_ids`` files carry.
* open_clip (SD2 ``cond_stage_model.model.``, SDXL ``conditioner.embedders.1.model.``):
  ``transformer.resblocks.<i>`` with q/k/v fused into ``attn.in_proj_weight``/``_bias``,
  ``ln_1/ln_2``, ``mlp.c_fc/c_proj``, ``token_embedding``, ``positional_embedding``,
  ``ln_final``, ``text_projection`` stored transposed (``x @ P``), and ``logit_scale``.

What diffusers has no place for is filled in as published files hold it, none of it read by
SD: SD2's open_clip has one block more than diffusers keeps (SD2 reads the penultimate
layer's output), written as a copy of the last kept block; SD2's text projection (its text
encoder has none) as the identity; ``logit_scale`` as ln 100 (trained CLIP's value); SD1/SD2's
DDPM ``betas`` and ``alphas_cumprod`` from the pipeline's scheduler. Every other tensor is the
model's own, in its dtype, so loading the file back gives the same weights bit for bit.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..keys import LDM_TEXT_ENCODERS, LDM_UNET, LDM_VAE, diffusers_to_sgm, unet_layout

Tensor = torch.Tensor

#: diffusers → LDM names inside a VAE level or mid block, applied to every key
_VAE_NAMES = (("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"))
#: the VAE mid attention's diffusers sub-modules → LDM names
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_VAE_LEVEL = re.compile(
    r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\."
)
_VAE_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.")

#: HF CLIP → open_clip names inside one encoder layer (q/k/v are fused separately)
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_CLIP_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
#: open_clip's trained logit scale, ln(1/0.01), as published files hold it
LOGIT_SCALE = math.log(100.0)


def unet_state_dict(unet: Any) -> dict[str, Tensor]:
    layout = unet_layout(unet.config)
    out = {}
    for key, value in unet.state_dict().items():
        path, leaf = key.rsplit(".", 1)
        out[f"{LDM_UNET}{diffusers_to_sgm(path, layout)}.{leaf}"] = value
    return out


def _vae_key(key: str, levels: int) -> str:
    def level(m: re.Match[str]) -> str:
        part, _, i, kind, j = m.groups()
        i = int(i) if part == "encoder" else levels - 1 - int(i)
        where = "down" if part == "encoder" else "up"
        sampler = {"downsamplers": "downsample", "upsamplers": "upsample"}.get(kind)
        return f"{part}.{where}.{i}.{sampler or f'block.{j}'}."

    def mid(m: re.Match[str]) -> str:
        part, kind, j = m.groups()
        return f"{part}.mid." + (f"block_{int(j) + 1}." if kind == "resnets" else "attn_1.")

    key = _VAE_MID.sub(mid, _VAE_LEVEL.sub(level, key))
    if ".mid.attn_1." in key:
        head, rest = key.split(".mid.attn_1.")
        sub, leaf = rest.rsplit(".", 1)
        key = f"{head}.mid.attn_1.{_VAE_ATTENTION[sub]}.{leaf}"
    for src, dst in _VAE_NAMES:
        key = key.replace(src, dst)
    return key


def vae_state_dict(vae: Any) -> dict[str, Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = _vae_key(key, levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # linear → 1×1 convolution
        out[LDM_VAE + new] = value
    return out


def _hf_clip(text_encoder: Any) -> dict[str, Tensor]:
    """The HF CLIP state dict without the ``text_model.`` level (absent in transformers ≥5.16)."""
    return {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def clip_l_state_dict(text_encoder: Any, prefix: str) -> dict[str, Tensor]:
    sd = _hf_clip(text_encoder)
    positions = text_encoder.config.max_position_embeddings
    sd.setdefault("embeddings.position_ids", torch.arange(positions)[None])
    return {f"{prefix}text_model.{k}": v for k, v in sd.items()}


def open_clip_state_dict(text_encoder: Any, prefix: str, spare_layer: bool) -> dict[str, Tensor]:
    """open_clip's names; ``spare_layer``: one more block (SD2's), a copy of the last one."""
    sd = _hf_clip(text_encoder)
    dtype = sd["final_layer_norm.weight"].dtype
    out = {_OPEN_CLIP_TOP[k]: v for k, v in sd.items() if k in _OPEN_CLIP_TOP}
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in sd.items():
        if found := _CLIP_LAYER.fullmatch(key):
            i, module, leaf = found.groups()
            layers.setdefault(int(i), {})[f"{module}.{leaf}"] = value
    if spare_layer:
        layers[len(layers)] = {k: v.clone() for k, v in layers[len(layers) - 1].items()}
    for i, layer in layers.items():
        block = f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{block}attn.in_proj_{leaf}"] = torch.cat([layer[f"{m}.{leaf}"] for m in _QKV])
            for hf, oc in _OPEN_CLIP_LAYER.items():
                out[f"{block}{oc}.{leaf}"] = layer[f"{hf}.{leaf}"]
    width = text_encoder.config.hidden_size
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    else:  # SD2: unused; the identity keeps the published shape
        out["text_projection"] = torch.eye(width, dtype=dtype)
    out["logit_scale"] = torch.tensor(LOGIT_SCALE, dtype=dtype)
    return {prefix + k: v for k, v in out.items()}


def _schedule(scheduler: Any) -> dict[str, Tensor]:
    """The DDPM schedule SD1/SD2 files carry, as the pipeline's scheduler computes it."""
    return {
        "betas": scheduler.betas.to(torch.float32),
        "alphas_cumprod": scheduler.alphas_cumprod.to(torch.float32),
    }


def ldm_state_dict(pipe: Any, base: str) -> dict[str, Tensor]:
    """Every tensor of ``pipe`` (a diffusers SD1/SD2/SDXL pipeline) under its published key,
    contiguous, ready for `safetensors.torch.save_file`."""
    out = unet_state_dict(pipe.unet) | vae_state_dict(pipe.vae)
    for name, (prefix, open_clip) in LDM_TEXT_ENCODERS[base].items():
        te = getattr(pipe, name)
        if open_clip:
            out |= open_clip_state_dict(te, prefix, spare_layer=base == "sd2")
        else:
            out |= clip_l_state_dict(te, prefix)
    if base != "sdxl":
        out |= _schedule(pipe.scheduler)
    return {k: v.contiguous() for k, v in out.items()}
