"""Diffusers → Stability/sgm module names for the SDXL UNet, as kohya's SDXL LoRA files use them.

Written from the SDXL layout (input_blocks 0..8, middle_block 0..2, output_blocks 0..8; each
level has two resnets and, at levels 1-2, two transformers) so that it checks the engine's
own mapping instead of repeating it.
"""

from __future__ import annotations

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UP_BLOCKS_WITH_ATTENTION = {0, 1}


def _block(kind: str, rest: list[str]) -> str:
    if kind == "resnets":
        return ".".join([_RESNET.get(rest[0], rest[0]), *rest[1:]])
    return ".".join(rest)


def sdxl_sgm_name(path: str) -> str:
    """`down_blocks.1.attentions.0.proj_in` → `input_blocks.4.1.proj_in`."""
    if path in _TOP:
        return _TOP[path]
    p = path.split(".")
    if p[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{p[1]}.{p[2]}"]
        return f"middle_block.{index}.{_block(p[1], p[3:])}"
    level = int(p[1])
    if p[0] == "down_blocks":
        if p[2] == "downsamplers":  # down_blocks.i.downsamplers.0.conv
            return f"input_blocks.{3 * (level + 1)}.0.op"
        j = int(p[3])
        slot = 0 if p[2] == "resnets" else 1
        return f"input_blocks.{3 * level + j + 1}.{slot}.{_block(p[2], p[4:])}"
    if p[0] == "up_blocks":
        if p[2] == "upsamplers":  # up_blocks.i.upsamplers.0.conv
            slot = 2 if level in _UP_BLOCKS_WITH_ATTENTION else 1
            return f"output_blocks.{3 * level + 2}.{slot}.conv"
        j = int(p[3])
        slot = 0 if p[2] == "resnets" else 1
        return f"output_blocks.{3 * level + j}.{slot}.{_block(p[2], p[4:])}"
    raise KeyError(path)
