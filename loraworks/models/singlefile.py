"""Single-file SD1/SD2/SDXL checkpoints (original LDM key layout) → diffusers, offline.

Configs come from `configs/<base>.json` (the published architectures); every width, depth
and block layout that the tensors reveal overrides the template, so fine-tunes with other
sizes load too. Only what weights cannot tell (head counts, scheduler) comes from the
template. Key conversion is diffusers' own (`diffusers.loaders.single_file_utils`).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from loraworks.models.errors import ModelError
from loraworks.models.safefiles import read_weights
from loraworks.models.tokenizer import clip_tokenizer

UNET = "model.diffusion_model."
VAE = "first_stage_model."
# text encoder prefixes: (LDM prefix, open_clip layout?)
TEXT_ENCODERS: dict[str, dict[str, tuple[str, bool]]] = {
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", False)},
    "sd2": {"text_encoder": ("cond_stage_model.model.", True)},
    "sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", False),
        "text_encoder_2": ("conditioner.embedders.1.model.", True),
    },
}


def template(base: str) -> dict[str, Any]:
    text = resources.files("loraworks.models").joinpath(f"configs/{base}.json").read_text()
    return json.loads(text)


def _indices(keys: list[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _heads(template_value: Any, level: int, channels: int) -> int:
    """Head count per level: the template's when it divides the width, else 64-wide heads."""
    if isinstance(template_value, list):
        value = template_value[min(level, len(template_value) - 1)]
    else:
        value = template_value
    if value and channels % value == 0:
        return int(value)
    return max(1, channels // 64) if channels % 64 == 0 else 1


def unet_config(sd: dict[str, torch.Tensor], base_cfg: dict[str, Any]) -> dict[str, Any]:
    keys = [k[len(UNET) :] for k in sd if k.startswith(UNET)]
    shape = {k[len(UNET) :]: tuple(v.shape) for k, v in sd.items() if k.startswith(UNET)}
    levels: list[dict[str, Any]] = [{"resnets": 0, "attn": False, "channels": 0, "depth": 1}]
    for block in _indices(keys, r"input_blocks\.(\d+)\.")[1:]:
        level = levels[-1]
        if f"input_blocks.{block}.0.op.weight" in shape:
            levels.append({"resnets": 0, "attn": False, "channels": 0, "depth": 1})
            continue
        level["resnets"] += 1
        level["channels"] = shape[f"input_blocks.{block}.0.out_layers.3.weight"][0]
        if f"input_blocks.{block}.1.proj_in.weight" in shape:
            level["attn"] = True
            level["depth"] = len(
                _indices(keys, rf"input_blocks\.{block}\.1\.transformer_blocks\.(\d+)\.")
            )
    cfg = dict(base_cfg)
    to_k = next(v for k, v in shape.items() if k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in shape.items() if k.endswith("proj_in.weight"))
    channels = [lv["channels"] for lv in levels]
    cfg.update(
        in_channels=shape["input_blocks.0.0.weight"][1],
        out_channels=shape["out.2.weight"][0],
        block_out_channels=channels,
        layers_per_block=levels[0]["resnets"],
        down_block_types=["CrossAttnDownBlock2D" if lv["attn"] else "DownBlock2D" for lv in levels],
        up_block_types=[
            "CrossAttnUpBlock2D" if lv["attn"] else "UpBlock2D" for lv in reversed(levels)
        ],
        transformer_layers_per_block=[lv["depth"] for lv in levels],
        cross_attention_dim=to_k[1],
        use_linear_projection=len(proj_in) == 2,
        attention_head_dim=[
            _heads(base_cfg["attention_head_dim"], i, c) for i, c in enumerate(channels)
        ],
        norm_num_groups=_groups(base_cfg["norm_num_groups"], channels),
    )
    if "label_emb.0.0.weight" in shape:
        adm_in = shape["label_emb.0.0.weight"][1]
        pooled = next(
            (tuple(v.shape)[1] for k, v in sd.items() if k.endswith("model.text_projection")), 1280
        )
        cfg.update(
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=adm_in,
            addition_time_embed_dim=(adm_in - pooled) // 6,
        )
    return cfg


def _groups(template_groups: int, channels: list[int]) -> int:
    return template_groups if all(c % template_groups == 0 for c in channels) else 8


def vae_config(sd: dict[str, torch.Tensor], base_cfg: dict[str, Any]) -> dict[str, Any]:
    shape = {k[len(VAE) :]: tuple(v.shape) for k, v in sd.items() if k.startswith(VAE)}
    keys = list(shape)
    n = len(_indices(keys, r"encoder\.down\.(\d+)\."))
    channels = [shape[f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(n)]
    cfg = dict(base_cfg)
    cfg.update(
        in_channels=shape["encoder.conv_in.weight"][1],
        out_channels=shape["decoder.conv_out.weight"][0],
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        layers_per_block=len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")),
        latent_channels=shape["post_quant_conv.weight"][0],
        norm_num_groups=_groups(base_cfg["norm_num_groups"], channels),
    )
    return cfg


def text_encoder_config(
    sd: dict[str, torch.Tensor], prefix: str, open_clip: bool, base_cfg: dict[str, Any]
) -> dict[str, Any]:
    shape = {k[len(prefix) :]: tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}
    keys = list(shape)
    cfg = {k: v for k, v in base_cfg.items() if k != "class"}
    if open_clip:
        vocab, hidden = shape["token_embedding.weight"]
        layers = len(_indices(keys, r"transformer\.resblocks\.(\d+)\."))
        # SD2 uses the penultimate layer: diffusers keeps one layer fewer than the file has
        if base_cfg["num_hidden_layers"] == 23:
            layers -= 1
        inner = shape["transformer.resblocks.0.mlp.c_fc.weight"][0]
        positions = shape["positional_embedding"][0]
        if "text_projection" in shape:
            cfg["projection_dim"] = shape["text_projection"][1]
    else:
        keys = [k.removeprefix("text_model.") for k in keys]
        shape = {k.removeprefix("text_model."): v for k, v in shape.items()}
        vocab, hidden = shape["embeddings.token_embedding.weight"]
        layers = len(_indices(keys, r"encoder\.layers\.(\d+)\."))
        inner = shape["encoder.layers.0.mlp.fc1.weight"][0]
        positions = shape["embeddings.position_embedding.weight"][0]
    heads = base_cfg["num_attention_heads"]
    cfg.update(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=inner,
        max_position_embeddings=positions,
        num_attention_heads=heads if hidden % heads == 0 else max(1, hidden // 64),
    )
    return cfg


def _text_encoder(sd, prefix: str, open_clip: bool, base_cfg: dict[str, Any]):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if base_cfg["class"].endswith("Projection") else CLIPTextModel
    model = cls(CLIPTextConfig(**text_encoder_config(sd, prefix, open_clip, base_cfg)))
    if open_clip:
        state = convert_open_clip_checkpoint(model, sd, prefix=prefix)
    else:
        state = convert_ldm_clip_checkpoint(sd, remove_prefix=prefix)
    expected = set(model.state_dict())
    state = {_fit_text_key(k, expected): v for k, v in state.items()}
    # layers past the ones used: SD2 files hold one more (SD2 reads the penultimate layer)
    used = model.config.num_hidden_layers
    state = {k: v for k, v in state.items() if k in expected or not _beyond(k, used)}
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    _load(model, state, "text encoder")
    return model


def _beyond(key: str, layers: int) -> bool:
    found = re.match(r"(?:text_model\.)?encoder\.layers\.(\d+)\.", key)
    return bool(found) and int(found.group(1)) >= layers


def _fit_text_key(key: str, expected: set[str]) -> str:
    """transformers ≥5.6 `CLIPTextModel` has no `text_model.` level; files always do."""
    if key in expected:
        return key
    stripped = key.removeprefix("text_model.")
    return stripped if stripped in expected else key


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"the checkpoint's {what} does not match its inferred architecture "
            f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected weights, "
            f"e.g. {(missing or result.unexpected_keys)[0]})"
        )


def load_checkpoint(cls, path: Path, base: str, cache: Path, **kwargs: Any):
    """Build `cls` (a diffusers SD or SDXL pipeline) from a single-file checkpoint."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    dtype = kwargs.pop("dtype", None)
    sd = read_weights(path).tensors
    cfg = template(base)
    if not any(k.startswith(VAE) for k in sd):
        raise ModelError(f"{path.name}: the checkpoint holds no VAE (first_stage_model.*)")
    unet_cfg = unet_config(sd, cfg["unet"])
    unet = UNet2DConditionModel(**unet_cfg)
    _load(unet, convert_ldm_unet_checkpoint(sd, unet_cfg), "UNet")
    vae_cfg = vae_config(sd, cfg["vae"])
    vae = AutoencoderKL(**vae_cfg)
    _load(vae, convert_ldm_vae_checkpoint(sd, vae_cfg), "VAE")
    parts: dict[str, Any] = {"unet": unet, "vae": vae}
    for name, (prefix, open_clip) in TEXT_ENCODERS[base].items():
        if not any(k.startswith(prefix) for k in sd):
            raise ModelError(f"{path.name}: no {base} text encoder weights ({prefix}*)")
        parts[name] = _text_encoder(sd, prefix, open_clip, cfg[name])
        tok_name = name.replace("text_encoder", "tokenizer")
        parts[tok_name] = clip_tokenizer(cache, cfg[tok_name]["pad_token"])
    sched_cfg = {k: v for k, v in cfg["scheduler"].items() if k != "class"}
    parts["scheduler"] = EulerDiscreteScheduler(**sched_cfg)
    del sd
    pipe = cls(**parts, **kwargs)
    return pipe if dtype is None else pipe.to(dtype=dtype)
