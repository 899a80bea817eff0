"""diffusers pipeline LoRA files (``pytorch_lora_weights.safetensors``), three generations:

1. attention processors: ``unet.<attn>.processor.to_q_lora.down.weight`` (``to_out_lora`` →
   ``to_out.0``; text encoder ``to_q_lora`` → ``q_proj``), sometimes without the ``unet.``
   prefix;
2. ``unet.<module>.lora.down.weight`` and ``text_encoder.<module>.lora_linear_layer.up.weight``;
3. PEFT names with a component prefix: ``unet.<module>.lora_A.weight`` / ``lora_B.weight``
   (``lora_magnitude_vector`` for DoRA; LoHa/LoKr/IA3 leaves pass through).

Component prefixes: ``unet.``, ``text_encoder.``, ``text_encoder_2.``. Scale: from the
``lora_adapter_metadata`` header (a PEFT config per component: ``r``, ``lora_alpha``,
``rank_pattern``, ``alpha_pattern``, ``use_rslora``, ``use_dora``) when present; otherwise from
``.alpha`` keys when present; otherwise alpha = rank (scale 1), as diffusers does. Maths: PEFT.
"""

from __future__ import annotations

from ..bases import COMPONENTS, TEXT_ENCODER_2_WIDTH
from ..errors import LoRAFormatError
from ..layers import Tensor
from . import Converted
from ._common import (
    component_of_module,
    diffusers_metadata_configs,
    finish_module_path,
    peft_convention,
    split_leaf,
    te_width,
)


def _strip_component(key: str) -> tuple[str | None, str]:
    head, _, rest = key.partition(".")
    if head in COMPONENTS and rest:
        return head, rest
    return None, key


def is_diffusers_format(state_dict: dict[str, Tensor]) -> bool:
    hits = 0
    for key in state_dict:
        if key.startswith("base_model.model."):
            return False
        comp, rest = _strip_component(key)
        sl = split_leaf(rest)
        if sl is None:
            continue
        if comp is not None or component_of_module(sl[0].split("\x00")[0]) is not None:
            hits += 1
    return hits > 0


def convert(state_dict: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Converted:
    metadata = metadata or {}
    configs = diffusers_metadata_configs(metadata)
    groups: dict[str, dict[str, Tensor]] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        comp, rest = _strip_component(key)
        sl = split_leaf(rest)
        if sl is None:
            unknown.append(key)
            continue
        path, leaf = sl
        if comp is None:
            comp = component_of_module(path.split("\x00")[0])
            if comp is None:
                unknown.append(key)
                continue
        path = finish_module_path(path, comp)
        target = f"{comp}.{path}"
        groups.setdefault(target, {})[leaf] = tensor
        origin.setdefault(target, key.rsplit(".", 2)[0])
    if unknown:
        shown = ", ".join(sorted(unknown)[:8]) + (" …" if len(unknown) > 8 else "")
        raise LoRAFormatError(
            f"{len(unknown)} keys of this diffusers LoRA are not understood: {shown}"
        )
    _route_unprefixed_text_encoders(groups)
    conventions = {}
    for target in groups:
        comp, _, path = target.partition(".")
        conventions[target] = peft_convention(configs.get(comp), path)
    return Converted(format="diffusers", groups=groups, conventions=conventions, origin=origin)


def _route_unprefixed_text_encoders(groups: dict[str, dict[str, Tensor]]) -> None:
    """Un-prefixed CLIP keys: CLIP-G (1280 wide) layers belong to ``text_encoder_2``."""
    for target in list(groups):
        if target.startswith("text_encoder.") and te_width(groups[target]) == TEXT_ENCODER_2_WIDTH:
            new = "text_encoder_2." + target[len("text_encoder.") :]
            if new not in groups:
                groups[new] = groups.pop(target)
