"""kohya / A1111 / LyCORIS single files, and LCM-LoRA files.

Keys: ``<prefix><flattened module>.<leaf>`` with prefixes ``lora_unet_`` (UNet), ``lora_te_``
(SD1/SD2 CLIP), ``lora_te1_``/``lora_te2_`` (SDXL CLIP-L / CLIP-G), ``lycoris_`` (SimpleTuner,
UNet). SD1/SD2 UNet names are diffusers names; kohya SDXL UNet names are sgm names
(``input_blocks_4_1_proj_in``) and are converted to diffusers paths; LCM-LoRA files use the
kohya prefix with diffusers names on any base. Maths: LyCORIS conventions (alpha in the file).
"""

from __future__ import annotations

from ..errors import LoRAFormatError
from ..keys import is_sgm_unet_path, sgm_to_diffusers, unflatten
from ..layers import Tensor
from . import Converted

PREFIXES: tuple[tuple[str, str], ...] = (
    ("lora_unet_", "unet"),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te_", "text_encoder"),
    ("lycoris_", "unet"),
)
LYCORIS_LEAVES = (
    "hada_", "lokr_", "diff", "w_norm", "b_norm", "on_input", "dora_scale", "lora_mid",
)  # fmt: skip


def _split_prefix(key: str) -> tuple[str, str] | None:
    for prefix, comp in PREFIXES:
        if key.startswith(prefix):
            return prefix, comp
    return None


def is_kohya_format(state_dict: dict[str, Tensor]) -> bool:
    return any(_split_prefix(k) for k in state_dict)


def is_lcm_format(state_dict: dict[str, Tensor]) -> bool:
    """LCM-LoRA layout: kohya ``lora_unet_`` prefix, diffusers block names, UNet only, plain
    LoRA with ``.alpha`` (diffusers' ``train_lcm_distill_lora_*`` scripts save through
    ``get_module_kohya_state_dict``).
    On SD1/SD2 this layout is indistinguishable from an ordinary kohya UNet-only LoRA."""
    keys = list(state_dict)
    if not keys or not all(k.startswith("lora_unet_") for k in keys):
        return False
    if any(is_sgm_unet_path(unflatten(k[len("lora_unet_") :].split(".", 1)[0])) for k in keys):
        return False
    leaves = {k.split(".", 1)[1] for k in keys if "." in k}
    return leaves <= {"lora_up.weight", "lora_down.weight", "alpha"} and "alpha" in leaves


def convert(state_dict: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Converted:
    metadata = metadata or {}
    groups: dict[str, dict[str, Tensor]] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    sgm = diffusers_names = False
    for key, tensor in state_dict.items():
        hit = _split_prefix(key)
        if hit is None or "." not in key:
            unknown.append(key)
            continue
        prefix, comp = hit
        flat, leaf = key[len(prefix) :].split(".", 1)
        path = unflatten(flat)
        if comp == "unet":
            if is_sgm_unet_path(path):
                sgm = True
                path = sgm_to_diffusers(path)
            else:
                diffusers_names = True
        target = f"{comp}.{path}"
        prev = origin.setdefault(target, prefix + flat)
        if prev != prefix + flat:
            raise LoRAFormatError(f"keys {prev!r} and {prefix + flat!r} both target {target!r}")
        groups.setdefault(target, {})[leaf] = tensor
    if unknown:
        shown = ", ".join(sorted(unknown)[:8]) + (" …" if len(unknown) > 8 else "")
        raise LoRAFormatError(
            f"{len(unknown)} keys of this kohya-style file have no known prefix "
            f"(lora_unet_, lora_te_, lora_te1_, lora_te2_): {shown}"
        )
    lycoris = any(
        leaf.startswith(LYCORIS_LEAVES) or leaf == "weight" for g in groups.values() for leaf in g
    ) or "lycoris" in metadata.get("ss_network_module", "")
    unet_names = {(True, False): "sgm", (False, True): "diffusers", (True, True): "mixed"}.get(
        (sgm, diffusers_names)
    )
    return Converted(
        format="lycoris" if lycoris else "kohya",
        groups=groups,
        unet_names=unet_names,
        sgm_names=sgm,
        origin=origin,
    )
