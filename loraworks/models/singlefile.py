"""Single-file SD1/SD2/SDXL checkpoints (original LDM key layout) → diffusers, offline.

Configs come from `configs/<base>.json` (the published architectures); every width, depth
and block layout that the tensors reveal overrides the template, so fine-tunes with other
sizes load too. Only what weights cannot tell (head counts, scheduler) comes from the
template. Key conversion is diffusers' own (`diffusers.loaders.single_file_utils`), one
component at a time on that component's tensors, already read and cast.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from loraworks.lora.keys import LDM_TEXT_ENCODERS, LDM_UNET, LDM_VAE
from loraworks.models.assign import assign, empty, fit_text_keys
from loraworks.models.errors import ModelError
from loraworks.models.lazyweights import LazyWeights, stored_bytes
from loraworks.models.loadevents import LoadProgress, announced
from loraworks.models.originals import FileOriginals, storages
from loraworks.models.tokenizer import clip_tokenizer

# the layout's prefixes, shared with the writer (`loraworks.lora.tools.single_file`)
UNET, VAE, TEXT_ENCODERS = LDM_UNET, LDM_VAE, LDM_TEXT_ENCODERS


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


#: a component's file keys, and how to build it from their tensors (read and cast)
Part = tuple[list[str], Callable[[dict[str, torch.Tensor]], torch.nn.Module]]


def _parts(weights: LazyWeights, base: str) -> dict[str, Part]:
    """What each component is built from, in load order; the architecture comes from the
    shapes alone. The UNet comes last: the open_clip conversion copies q/k/v out of
    `in_proj` for a moment, which then happens while little is loaded, so the peak is the
    finished pipeline's size."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    name = weights.path.name
    if not _under(weights, VAE):
        raise ModelError(f"{name}: the checkpoint holds no VAE (first_stage_model.*)")
    for prefix, _ in TEXT_ENCODERS[base].values():
        if not _under(weights, prefix):
            raise ModelError(f"{name}: no {base} text encoder weights ({prefix}*)")
    cfg = template(base)
    shapes = weights.meta()
    parts: dict[str, Part] = {}
    for te, (prefix, open_clip) in TEXT_ENCODERS[base].items():
        projection = cfg[te]["class"].endswith("Projection")
        config = CLIPTextConfig(**text_encoder_config(shapes, prefix, open_clip, cfg[te]))
        # never read: layers past the ones used (SD2 files hold one more: SD2 reads the
        # penultimate layer), and SD2's open_clip text projection (its text encoder has none)
        unread = f"{prefix}text_projection" if open_clip and not projection else None
        keys = [
            k
            for k in _under(weights, prefix)
            if k != unread and not _beyond(k[len(prefix) :], config.num_hidden_layers)
        ]
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        parts[te] = (keys, partial(_text_encoder, cls, config, prefix, open_clip))
    parts["vae"] = (_under(weights, VAE), partial(_vae, vae_config(shapes, cfg["vae"])))
    parts["unet"] = (_under(weights, UNET), partial(_unet, unet_config(shapes, cfg["unet"])))
    return parts


def _under(weights: LazyWeights, prefix: str) -> list[str]:
    return [k for k in weights.shapes if k.startswith(prefix)]


def _unet(cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = empty(lambda: UNet2DConditionModel(**cfg))
    return assign(unet, convert_ldm_unet_checkpoint(sd, cfg), "checkpoint's UNet")


def _vae(cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = empty(lambda: AutoencoderKL(**cfg))
    return assign(vae, convert_ldm_vae_checkpoint(sd, cfg), "checkpoint's VAE")


def _text_encoder(
    cls, config, prefix: str, open_clip: bool, sd: dict[str, torch.Tensor]
) -> torch.nn.Module:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )

    model = empty(lambda: cls(config))
    if open_clip:
        state = _in_proj_views(convert_open_clip_checkpoint(model, sd, prefix=prefix), sd, prefix)
    else:
        state = convert_ldm_clip_checkpoint(sd, remove_prefix=prefix)
    state = fit_text_keys(state, model)
    expected = model.state_dict()
    # CLIP-L's position ids, in published files: a buffer the model builds itself
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    return assign(model, state, "checkpoint's text encoder")


_IN_PROJ = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def _in_proj_views(
    state: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], prefix: str
) -> dict[str, torch.Tensor]:
    """open_clip's q/k/v as views of the file's `in_proj` instead of diffusers' copies: the
    same values (checked), no second copy while loading, and a weight the *file* patching
    strategy can read back (`loraworks.models.originals`) rather than keep a host copy of."""
    for key, tensor in sd.items():
        found = _IN_PROJ.fullmatch(key.removeprefix(prefix))
        if found is None:
            continue
        layer, leaf = found.groups()
        for part, view in zip("qkv", tensor.chunk(3), strict=True):
            name = f"text_model.encoder.layers.{layer}.self_attn.{part}_proj.{leaf}"
            if name in state and torch.equal(state[name], view):
                state[name] = view
    return state


def _beyond(key: str, layers: int) -> bool:
    """An LDM text-encoder key (prefix removed) of a layer at or past `layers`."""
    found = re.match(r"(?:transformer\.resblocks|(?:text_model\.)?encoder\.layers)\.(\d+)\.", key)
    return bool(found) and int(found.group(1)) >= layers


def checkpoint_bytes(path: Path, base: str, dtype: torch.dtype) -> int:
    """The pipeline's weights in `dtype`, from the file's header (`stored_bytes`)."""
    return stored_bytes(
        path, dtype, lambda weights: [k for keys, _ in _parts(weights, base).values() for k in keys]
    )


def load_checkpoint(
    cls,
    path: Path,
    base: str,
    cache: Path,
    dtype: torch.dtype | None = None,
    progress: LoadProgress | None = None,
    originals: FileOriginals | None = None,
    **kwargs: Any,
):
    """Build `cls` (a diffusers SD or SDXL pipeline) from a single-file checkpoint.

    Each component is built on the meta device and given the file's tensors cast to `dtype`
    (float32 when None), read one at a time (`LazyWeights`): the load peaks near the
    pipeline's size in `dtype`, and every weight is bit for bit `tensor.to(dtype)` of the
    file's. `progress` hears of each component as it starts; `originals`, when given, notes
    where each weight came from, to be read again after a patch in place."""
    from diffusers import EulerDiscreteScheduler

    dtype = dtype or torch.float32
    weights = LazyWeights(path)
    parts: dict[str, Any] = {}
    for name, (keys, build) in announced(_parts(weights, base), progress):
        state = weights.take(keys, dtype)
        read = storages(state)
        parts[name] = build(state)
        if originals is not None:
            originals.add(name, weights, dtype, parts[name], read)
    cfg = template(base)
    for name in TEXT_ENCODERS[base]:
        tok_name = name.replace("text_encoder", "tokenizer")
        parts[tok_name] = clip_tokenizer(cache, cfg[tok_name]["pad_token"])
    sched_cfg = {k: v for k, v in cfg["scheduler"].items() if k != "class"}
    parts["scheduler"] = EulerDiscreteScheduler(**sched_cfg)
    return cls(**parts, **kwargs)
