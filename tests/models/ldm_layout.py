"""diffusers → original LDM (CompVis/A1111 single-file) key layout, for SD1 test checkpoints.

Written from the published mapping (diffusers' `scripts/convert_diffusers_to_original_
stable_diffusion.py`), generalised over the number of levels and layers per block so the
tiny fixtures can be saved as SD1.5-layout single files. It is the independent truth the
manager's loader (which uses diffusers' forward conversion) is checked against.
"""

from __future__ import annotations

import torch


def _unet_prefix_map(n_levels: int, layers: int, attn_levels: list[bool]) -> list[tuple[str, str]]:
    """(ldm prefix, diffusers prefix) pairs for the UNet blocks."""
    pairs: list[tuple[str, str]] = []
    for i in range(n_levels):
        for j in range(layers):
            pairs.append(
                (f"input_blocks.{(layers + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}.")
            )
            if attn_levels[i]:
                pairs.append(
                    (
                        f"input_blocks.{(layers + 1) * i + j + 1}.1.",
                        f"down_blocks.{i}.attentions.{j}.",
                    )
                )
        if i < n_levels - 1:
            pairs.append(
                (
                    f"input_blocks.{(layers + 1) * (i + 1)}.0.op.",
                    f"down_blocks.{i}.downsamplers.0.conv.",
                )
            )
        up_attn = attn_levels[n_levels - 1 - i]
        for j in range(layers + 1):
            pairs.append(
                (f"output_blocks.{(layers + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}.")
            )
            if up_attn:
                pairs.append(
                    (f"output_blocks.{(layers + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}.")
                )
        if i < n_levels - 1:
            slot = 2 if up_attn else 1
            pairs.append(
                (
                    f"output_blocks.{(layers + 1) * i + layers}.{slot}.",
                    f"up_blocks.{i}.upsamplers.0.",
                )
            )
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


_UNET_TOP = [
    ("label_emb.0.0.", "add_embedding.linear_1."),
    ("label_emb.0.2.", "add_embedding.linear_2."),
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]
_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    cfg = unet.config
    attn_levels = ["CrossAttn" in t for t in cfg.down_block_types]
    layer_map = _unet_prefix_map(len(cfg.block_out_channels), cfg.layers_per_block, attn_levels)
    out = {}
    for key, value in unet.state_dict().items():
        new = key
        for ldm, hf in _UNET_TOP:
            if new.startswith(hf):
                new = ldm + new[len(hf) :]
        if "resnets" in new:
            for ldm, hf in _RESNET:
                new = new.replace(hf, ldm)
        for ldm, hf in layer_map:
            if new.startswith(hf):
                new = ldm + new[len(hf) :]
                break
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    cfg = vae.config
    n = len(cfg.block_out_channels)
    layers = cfg.layers_per_block
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out")]
    for i in range(n):
        pairs += [
            (f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.")
            for j in range(layers)
        ]
        pairs += [
            (f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.")
            for j in range(layers + 1)
        ]
        if i < n - 1:
            pairs.append(
                (f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0.")
            )
            pairs.append(
                (f"decoder.up.{n - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0.")
            )
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.mid.block_{j + 1}.", f"{part}.mid_block.resnets.{j}.") for j in range(2)
        ]
    attn = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ]
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        if ".mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for ldm, hf in attn:
                new = new.replace(".attn_1." + hf, ".attn_1." + ldm)
            if value.ndim == 2:
                value = value[:, :, None, None]
        for ldm, hf in pairs:
            new = new.replace(hf, ldm)
        out["first_stage_model." + new] = value
    return out


def clip_l_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in text_encoder.state_dict().items():
        inner = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + inner] = value
    return out


def open_clip_to_ldm(text_encoder, prefix: str, spare_layer: bool) -> dict[str, torch.Tensor]:
    """HF CLIP → open_clip layout (fused q/k/v `in_proj`, `resblocks`, transposed projection).

    `spare_layer` appends one more block, as SD2 files have: SD2 uses the penultimate layer,
    so diffusers keeps one block fewer than the file holds.
    """
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    n = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].T
    for i in range(n + int(spare_layer)):
        src = f"encoder.layers.{min(i, n - 1)}."
        dst = f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[dst + f"attn.in_proj_{p}"] = torch.cat(
                [sd[src + f"self_attn.{x}_proj.{p}"] for x in "qkv"]
            )
            pairs = [
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("attn.out_proj", "self_attn.out_proj"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ]
            for ldm, hf in pairs:
                out[dst + f"{ldm}.{p}"] = sd[src + f"{hf}.{p}"]
    return {prefix + k: v.clone() for k, v in out.items()}


def sd2_to_ldm(pipe) -> dict[str, torch.Tensor]:
    return {
        **unet_to_ldm(pipe.unet),
        **vae_to_ldm(pipe.vae),
        **open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model.", spare_layer=True),
    }


def sdxl_to_ldm(pipe) -> dict[str, torch.Tensor]:
    te1 = clip_l_to_ldm(pipe.text_encoder)
    return {
        **unet_to_ldm(pipe.unet),
        **vae_to_ldm(pipe.vae),
        **{k.replace("cond_stage_model.", "conditioner.embedders.0."): v for k, v in te1.items()},
        **open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model.", False),
    }


def sd1_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline as one SD1.5-layout single-file state dict."""
    return {
        **unet_to_ldm(pipe.unet),
        **vae_to_ldm(pipe.vae),
        **clip_l_to_ldm(pipe.text_encoder),
    }
