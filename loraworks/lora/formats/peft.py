"""PEFT adapters: ``adapter_model.safetensors`` + ``adapter_config.json``.

Keys ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` (LoRA),
``lora_magnitude_vector`` (DoRA), ``hada_*`` (LoHa), ``lokr_*`` (LoKr), ``ia3_l`` (IA³); the
adapter name, if left in a key, is dropped. Scale from the config: ``lora_alpha/r`` (LoRA) or
``alpha/r`` (LoHa, LoKr), ``/√r`` with ``use_rslora``, per module through ``rank_pattern`` /
``alpha_pattern``; IA³'s axis from ``feedforward_modules``. PEFT's defaults (r = 8,
alpha = 8) apply when a folder has no config.

**Which component a PEFT adapter patches.** A PEFT adapter is saved per model, so the folder
does not say which pipeline part it was trained on. We decide in this order:

1. the sub-folder it came from (``unet/``, ``text_encoder/``, ``text_encoder_2/``, as diffusers'
   ``save_pretrained`` of a pipeline writes them);
2. the module names: UNet names (``down_blocks``, ``mid_block``, ``conv_in``…) → ``unet``;
   CLIP names (``text_model``, ``encoder.layers``…) → a text encoder;
3. for a text encoder, its width: 1280 → ``text_encoder_2`` (SDXL CLIP-G), else
   ``text_encoder``. A mix of UNet and CLIP names in one adapter is refused.
"""

from __future__ import annotations

from typing import Any

from ..bases import TEXT_ENCODER_2_WIDTH
from ..errors import LoRAFormatError
from ..layers import Tensor
from ..probe import name_hint
from . import Converted
from ._common import component_of_module, peft_convention, split_leaf, te_width

PREFIX = "base_model.model."

#: PEFT's LoraConfig defaults (used when a folder has no adapter_config.json)
PEFT_DEFAULTS = {"peft_type": "LORA", "r": 8, "lora_alpha": 8}


def is_peft_format(state_dict: dict[str, Tensor]) -> bool:
    return any(k.startswith(PREFIX) for k in state_dict)


def _groups(sd: dict[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], dict[str, str]]:
    groups: dict[str, dict[str, Tensor]] = {}
    origin: dict[str, str] = {}
    unknown = []
    for key, tensor in sd.items():
        rest = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        sl = split_leaf(rest)
        if sl is None or "\x00" in sl[0]:
            unknown.append(key)
            continue
        path, leaf = sl
        groups.setdefault(path, {})[leaf] = tensor
        origin.setdefault(path, key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:8]) + (" …" if len(unknown) > 8 else "")
        raise LoRAFormatError(
            f"{len(unknown)} keys of this PEFT adapter are not understood: {shown}"
        )
    return groups, origin


def _component(groups: dict[str, dict[str, Tensor]]) -> str:
    kinds = {component_of_module(p) for p in groups}
    if None in kinds:
        bad = sorted(p for p in groups if component_of_module(p) is None)[:5]
        raise LoRAFormatError(
            f"cannot tell which model part this PEFT adapter targets from module names {bad}; "
            "put it in a unet/ or text_encoder/ sub-folder"
        )
    if len(kinds) > 1:
        raise LoRAFormatError("this PEFT adapter mixes UNet and text-encoder modules")
    (kind,) = kinds
    if kind == "text_encoder":
        widths = {te_width(leaves) for leaves in groups.values()} - {None}
        if widths == {TEXT_ENCODER_2_WIDTH}:
            return "text_encoder_2"
    return kind


def convert(
    sd: dict[str, Tensor],
    config: dict[str, Any] | None,
    metadata: dict[str, str] | None = None,
    component: str | None = None,
) -> Converted:
    groups, origin = _groups(sd)
    cfg = dict(PEFT_DEFAULTS) if config is None else config
    comp = component or _component(groups)
    out: dict[str, dict[str, Tensor]] = {}
    conventions = {}
    for path, leaves in groups.items():
        target = f"{comp}.{path}"
        out[target] = leaves
        conventions[target] = peft_convention(cfg, path)
    return Converted(
        format="peft",
        groups=out,
        conventions=conventions,
        origin={f"{comp}.{p}": o for p, o in origin.items()},
        base_hint=name_hint(cfg.get("base_model_name_or_path")),
    )


def convert_components(parts: dict[str, tuple[dict[str, Tensor], dict | None]]) -> Converted:
    """Several PEFT adapters from ``unet/``, ``text_encoder/``… sub-folders, one per part."""
    merged = Converted(format="peft", groups={})
    for comp, (sd, cfg) in parts.items():
        c = convert(sd, cfg, component=comp)
        merged.groups.update(c.groups)
        merged.conventions.update(c.conventions)
        merged.origin.update(c.origin)
        merged.base_hint = merged.base_hint or c.base_hint
    return merged
