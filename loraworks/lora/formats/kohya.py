"""kohya / A1111 / LyCORIS single files, and LCM-LoRA files.

Keys: ``<prefix><flattened module>.<leaf>`` with prefixes ``lora_unet_`` (UNet), ``lora_te_``
(SD1/SD2 CLIP), ``lora_te1_``/``lora_te2_`` (SDXL CLIP-L / CLIP-G), ``lycoris_`` (SimpleTuner,
UNet). SD1/SD2 UNet names are diffusers names; kohya SDXL UNet names are sgm names
(``input_blocks_4_1_proj_in``) and are converted to diffusers paths; LCM-LoRA files use the
kohya prefix with diffusers names on any base. Maths: LyCORIS conventions (alpha in the file).
The record's format is ``kohya`` unless ``ss_network_module`` names LyCORIS or a layer kind
only LyCORIS writes is present (`Layer.format`): then ``lycoris``, with or without metadata.
Textual-inversion embeddings bundled in the file (``bundle_emb.<name>.…``, kohya and A1111)
are not layers: they are left to `loraworks.embeddings`.
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
#: keys of embeddings bundled in a LoRA file (read by `loraworks.embeddings`)
BUNDLED_EMBEDDING_PREFIX = "bundle_emb."


def _split_prefix(key: str) -> tuple[str, str] | None:
    for prefix, comp in PREFIXES:
        if key.startswith(prefix):
            return prefix, comp
    return None


def is_kohya_format(state_dict: dict[str, Tensor]) -> bool:
    return any(_split_prefix(k) for k in state_dict)


def convert(state_dict: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Converted:
    metadata = metadata or {}
    groups: dict[str, dict[str, Tensor]] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    sgm = diffusers_names = False
    for key, tensor in state_dict.items():
        if key.startswith(BUNDLED_EMBEDDING_PREFIX):
            continue
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
    # the layer kinds may still make it "lycoris" (`Layer.format`, applied by `load.build`)
    lycoris = "lycoris" in metadata.get("ss_network_module", "")
    unet_names = {(True, False): "sgm", (False, True): "diffusers", (True, True): "mixed"}.get(
        (sgm, diffusers_names)
    )
    return Converted(
        format="lycoris" if lycoris else "kohya",
        format_from_kinds=True,
        groups=groups,
        unet_names=unet_names,
        sgm_names=sgm,
        origin=origin,
    )
