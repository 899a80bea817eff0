"""Module-name conversions: kohya flattened names, Stability/sgm UNet names, text-encoder paths.

* ``unflatten(name)``: kohya's ``down_blocks_0_attentions_0_..._to_out_0`` → dotted
  ``down_blocks.0.attentions.0....to_out.0``, by a deterministic tokeniser over the module-name
  vocabulary of diffusers UNets, Stability (sgm) UNets and HF CLIP text encoders (longest known
  token first; digits and unknown words are their own components). The patcher additionally
  resolves every key against the real module tree by its flattened form, so a vocabulary gap can
  never mis-target a layer: it can only fall back to the exact flattened lookup.
* ``sgm_to_diffusers(path)``: UNet names of the original (LDM/sgm) UNet → diffusers
  ``UNet2DConditionModel`` (2 resnets per down level, 3 per up level, as in SD1/SD2/SDXL).
* ``LDM_*``: the prefixes of single-file checkpoints (read by `loraworks.models.singlefile`,
  written by `loraworks.lora.tools.single_file`).
* ``text_encoder_candidates(path)``: a CLIP path with and without ``text_model.`` (transformers
  ≥5.16 has no ``text_model`` level; LoRA files name it).
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

from .errors import LoRAFormatError

# Module names containing "_" (single words need no entry).
VOCAB: frozenset[str] = frozenset(
    {
        # diffusers UNet
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "proj_in", "proj_out",
        "to_q", "to_k", "to_v", "to_out", "conv_in", "conv_out", "conv_norm_out",
        "conv_shortcut", "time_emb_proj", "time_embedding", "time_proj", "linear_1", "linear_2",
        "add_embedding", "add_time_proj", "class_embedding", "encoder_hid_proj", "proj_attn",
        "norm_out", "conv_act",
        # sgm / LDM UNet
        "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers",
        "emb_layers", "skip_connection", "time_embed", "label_emb",
        # HF CLIP
        "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm1",
        "layer_norm2", "final_layer_norm", "token_embedding", "position_embedding",
        "text_projection", "visual_projection",
    }
)  # fmt: skip
_MAX_TOKEN_PARTS = max(v.count("_") + 1 for v in VOCAB)


@functools.lru_cache(maxsize=16384)
def unflatten(name: str) -> str:
    """Insert the dots back into a kohya flattened module name (deterministic). Cached: every
    key of a module asks for the same name, and LoRAs for one base share their names (the
    tokeniser was ~15% of a one-shot load + apply + restore)."""
    parts = name.split("_")
    out: list[str] = []
    i = 0
    while i < len(parts):
        for n in range(min(_MAX_TOKEN_PARTS, len(parts) - i), 1, -1):
            cand = "_".join(parts[i : i + n])
            if cand in VOCAB:
                out.append(cand)
                i += n
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def flatten(path: str) -> str:
    return path.replace(".", "_")


# --- sgm (LDM / Stability) <-> diffusers UNet names ---------------------------------------

SGM_HEADS = ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out")

_RESNET_SGM_TO_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def is_sgm_unet_path(path: str) -> bool:
    return path.split(".", 1)[0] in SGM_HEADS


def _resnet(rest: list[str], path: str) -> str:
    if not rest:
        return ""
    joined = ".".join(rest)
    for src, dst in _RESNET_SGM_TO_DIFFUSERS.items():
        if joined == src or joined.startswith(src + "."):
            return "." + dst + joined[len(src) :]
    raise LoRAFormatError(f"unknown resnet sub-module {joined!r} in {path!r}")


def _int(s: str, path: str) -> int:
    if not s.isdigit():
        raise LoRAFormatError(f"malformed UNet module name {path!r}")
    return int(s)


def sgm_to_diffusers(path: str) -> str:
    """``input_blocks.4.1.proj_in`` → ``down_blocks.1.attentions.0.proj_in`` (etc.)."""
    p = path.split(".")
    head = p[0]
    try:
        if head == "input_blocks":
            n, sub, rest = _int(p[1], path), _int(p[2], path), p[3:]
            if n == 0:
                return "conv_in" + ("." + ".".join(rest) if rest else "")
            i, j = divmod(n - 1, 3)
            if j == 2:
                if rest[:1] != ["op"]:
                    raise LoRAFormatError(f"unexpected downsampler name {path!r}")
                return f"down_blocks.{i}.downsamplers.0.conv" + "".join("." + r for r in rest[1:])
            if sub == 0:
                inner = _resnet(rest, path)
                return f"down_blocks.{i}.resnets.{j}" + inner
            if sub == 1:
                return f"down_blocks.{i}.attentions.{j}." + ".".join(rest)
        elif head == "middle_block":
            n, rest = _int(p[1], path), p[2:]
            if n in (0, 2):
                return f"mid_block.resnets.{n // 2}" + _resnet(rest, path)
            if n == 1:
                return "mid_block.attentions.0." + ".".join(rest)
        elif head == "output_blocks":
            n, sub, rest = _int(p[1], path), _int(p[2], path), p[3:]
            i, j = divmod(n, 3)
            if sub == 0:
                return f"up_blocks.{i}.resnets.{j}" + _resnet(rest, path)
            if sub in (1, 2) and rest[:1] == ["conv"]:
                return f"up_blocks.{i}.upsamplers.0." + ".".join(rest)
            if sub == 1:
                return f"up_blocks.{i}.attentions.{j}." + ".".join(rest)
        elif head == "time_embed" and p[1:] in (["0"], ["2"]):
            return "time_embedding.linear_" + ("1" if p[1] == "0" else "2")
        elif head == "label_emb" and p[1:2] == ["0"] and p[2:] in (["0"], ["2"]):
            return "add_embedding.linear_" + ("1" if p[2] == "0" else "2")
        elif head == "out" and p[1:] in (["0"], ["2"]):
            return "conv_norm_out" if p[1] == "0" else "conv_out"
    except IndexError:
        pass
    raise LoRAFormatError(f"cannot map sgm UNet module {path!r} to a diffusers module")


#: diffusers → sgm names of the UNet modules outside the blocks
_TOP_DIFFUSERS_TO_SGM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET_DIFFUSERS_TO_SGM = {v: k for k, v in _RESNET_SGM_TO_DIFFUSERS.items()}


class UNetLayout(NamedTuple):
    """What the sgm numbering depends on: resnets per down level (one more per up level),
    and which up levels have attentions (their upsampler comes third in the block)."""

    layers: int
    attention_up: frozenset[int]


#: SD1/SD2/SDXL's UNets: 2 resnets per down level; SDXL's up levels 0 and 1 have attentions
SDXL_UNET = UNetLayout(2, frozenset({0, 1}))


def unet_layout(config: Any) -> UNetLayout:
    """The layout of a diffusers UNet from its config."""
    ups = config.up_block_types
    return UNetLayout(
        config.layers_per_block, frozenset(i for i, t in enumerate(ups) if "CrossAttn" in t)
    )


def diffusers_to_sgm(path: str, layout: UNetLayout = SDXL_UNET) -> str:
    """``down_blocks.1.attentions.0.proj_in`` → ``input_blocks.4.1.proj_in`` (the inverse of
    `sgm_to_diffusers`, for any number of levels and resnets)."""
    for src, dst in _TOP_DIFFUSERS_TO_SGM.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src) :]
    p, step = path.split("."), layout.layers + 1
    try:
        head = p[0]
        if head == "mid_block":  # mid_block.<kind>.<j>…, the others <head>.<i>.<kind>.<j>…
            kind, j, rest = p[1], _int(p[2], path), p[3:]
            if kind == "resnets" and j in (0, 1):
                return f"middle_block.{2 * j}" + _resnet_to_sgm(rest, path)
            if kind == "attentions" and j == 0:
                return "middle_block.1" + _tail(rest)
        elif head == "down_blocks":
            i, kind, j, rest = _int(p[1], path), p[2], _int(p[3], path), p[4:]
            if kind == "downsamplers" and j == 0 and rest[:1] == ["conv"]:
                return f"input_blocks.{step * (i + 1)}.0.op" + _tail(rest[1:])
            block = f"input_blocks.{step * i + j + 1}"
            if kind == "resnets":
                return block + ".0" + _resnet_to_sgm(rest, path)
            if kind == "attentions":
                return block + ".1" + _tail(rest)
        elif head == "up_blocks":
            i, kind, j, rest = _int(p[1], path), p[2], _int(p[3], path), p[4:]
            if kind == "upsamplers" and j == 0:
                slot = 2 if i in layout.attention_up else 1
                return f"output_blocks.{step * i + layout.layers}.{slot}" + _tail(rest)
            block = f"output_blocks.{step * i + j}"
            if kind == "resnets":
                return block + ".0" + _resnet_to_sgm(rest, path)
            if kind == "attentions":
                return block + ".1" + _tail(rest)
    except (IndexError, LoRAFormatError):
        pass
    raise LoRAFormatError(f"cannot map diffusers UNet module {path!r} to an sgm module")


def _tail(rest: list[str]) -> str:
    return "".join("." + r for r in rest)


def _resnet_to_sgm(rest: list[str], path: str) -> str:
    if not rest:
        return ""
    if rest[0] not in _RESNET_DIFFUSERS_TO_SGM:
        raise LoRAFormatError(f"unknown resnet sub-module {rest[0]!r} in {path!r}")
    return "." + _RESNET_DIFFUSERS_TO_SGM[rest[0]] + _tail(rest[1:])


# --- single-file (original LDM / sgm) checkpoints --------------------------------------------

LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
#: per base, each text encoder's prefix in a single file and whether it is in open_clip's layout
LDM_TEXT_ENCODERS: dict[str, dict[str, tuple[str, bool]]] = {
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", False)},
    "sd2": {"text_encoder": ("cond_stage_model.model.", True)},
    "sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", False),
        "text_encoder_2": ("conditioner.embedders.1.model.", True),
    },
}


# --- text encoders -------------------------------------------------------------------------


def text_encoder_candidates(path: str) -> list[str]:
    """A CLIP module path as written, then with ``text_model.`` removed or added."""
    if path.startswith("text_model."):
        return [path, path[len("text_model.") :]]
    return [path, "text_model." + path]


_TRANSFORMER_INDEX = re.compile(r"(?:^|\.)transformer_blocks\.(\d+)\.")


def transformer_block_index(path: str) -> int | None:
    m = _TRANSFORMER_INDEX.search(path)
    return int(m.group(1)) if m else None
