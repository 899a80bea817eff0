"""Key-family converters: state dict (+ metadata) → {target path: leaves} plus a convention.

Each converter is pure and has one predicate:

* `kohya`:    ``is_kohya_format`` — kohya / A1111 / LyCORIS single files (``lora_unet_``,
  ``lora_te_``, ``lora_te1_``, ``lora_te2_``), incl. SDXL sgm names and LCM-LoRA files
  (kohya prefix + diffusers names, UNet only).
* `diffusers`: ``is_diffusers_format`` — diffusers pipeline files in all three generations.
* `peft`:     ``is_peft_format`` — ``base_model.model.`` PEFT adapters (with adapter_config.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..layers import Convention, Tensor


@dataclass
class Converted:
    """What a converter produces: grouped leaves per target, ready for the layer registry."""

    format: str
    groups: dict[str, dict[str, Tensor]]  # "unet.down_blocks...to_q" -> {"lora_up.weight": t}
    conventions: dict[str, Convention] = field(default_factory=dict)  # per target (else default)
    default: Convention = field(default_factory=Convention)
    unet_names: str | None = None
    sgm_names: bool = False
    #: a base named by the producer's config (PEFT ``base_model_name_or_path``)
    base_hint: str | None = None
    #: original key prefix per target, for error messages
    origin: dict[str, str] = field(default_factory=dict)
    #: a layer kind's own label (`Layer.format`, e.g. LoHa → ``lycoris``) replaces ``format``
    #: (kohya-style files: the same layout serves kohya and LyCORIS)
    format_from_kinds: bool = False
