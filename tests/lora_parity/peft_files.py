"""PEFT 0.21.2 adapters on the tiny models, saved as PEFT folders, through diffusers'
`save_lora_weights`, as an LCM-LoRA (kohya keys) and as first-generation attn-procs keys;
the reference is the PEFT-wrapped model's forward."""

from __future__ import annotations

import re
from pathlib import Path
from unittest.mock import patch

import torch

from tests.lora_parity.common import (
    WEIGHTS,
    Produced,
    Weight,
    component_weight,
    fresh,
    save_safetensors,
)
from tests.lora_parity.inputs import Outputs, forward_all

PEFT_UNET_TARGETS = (
    r".*(down_blocks\.1|mid_block|up_blocks\.1)\..*"
    r"\.(to_q|to_k|to_v|to_out\.0|proj_in|ff\.net\.2|conv1)$"
)
PEFT_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
#: OFT's forward equals its merge only for linears and 1x1 convs (see `peft_oft.py`): its
#: parity on 3x3 convs is `test_layers`' comparison with PEFT's merge
PEFT_OFT_UNET_TARGETS = PEFT_UNET_TARGETS.replace("|conv1)", ")")


def peft_config(kind: str, targets):
    """PEFT configs with alpha ≠ r, so that a loader that ignores alpha fails."""
    from peft import BOFTConfig, IA3Config, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig

    if kind in PEFT_OFT_KINDS:
        return OFTConfig(oft_block_size=4, target_modules=targets, **PEFT_OFT_KINDS[kind])
    if kind == "boft":  # one stage: PEFT builds more only with its CUDA kernel
        return BOFTConfig(boft_block_size=4, target_modules=targets)
    if kind == "ia3":
        ff = r".*\.ff\.net\.2$" if isinstance(targets, str) else ["fc2"]
        return IA3Config(target_modules=targets, feedforward_modules=ff)
    if kind == "loha":
        return LoHaConfig(r=4, alpha=2, target_modules=targets)
    if kind == "lokr":
        return LoKrConfig(r=4, alpha=2, target_modules=targets)
    extra = {"dora": dict(use_dora=True), "rslora": dict(use_rslora=True)}.get(kind, {})
    return LoraConfig(r=4, lora_alpha=2, target_modules=targets, **extra)


#: PEFT's default OFT (Cayley by a 5-term Neumann series), the exact Cayley transform, and
#: COFT (one shared block, which leaves no evidence of the base, is in `test_layers`)
PEFT_OFT_KINDS = {
    "oft": {},
    "oft_cayley": dict(use_cayley_neumann=False),
    "oft_coft": dict(coft=True, eps=0.05),
}
PEFT_KINDS = ("lora", "dora", "rslora", "loha", "lokr", "ia3", *PEFT_OFT_KINDS, "boft")
#: kinds PEFT gives no user weight (and no working `set_scale`)
PEFT_UNWEIGHTED = ("ia3", "boft", *PEFT_OFT_KINDS)


@torch.no_grad()
def randomise_peft(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Draw every adapter parameter; magnitudes and IA3 scales stay near their start value."""
    for name, p in model.named_parameters():
        if not p.requires_grad:  # base weights are frozen by PEFT
            continue
        noise = torch.randn(p.shape, generator=gen)
        if "lora_magnitude_vector" in name:
            p.mul_(1 + 0.1 * noise)
        elif "ia3_l" in name:
            p.copy_(1 + 0.3 * noise)
        elif "boft_s" in name:
            p.copy_(1 + 0.05 * noise)
        else:
            p.copy_(noise * (0.2 if "hada_" in name else 0.05))


def peft_set_weight(models, weight: Weight) -> None:
    """diffusers' `set_adapters` weights: `set_scale(adapter, m)` on every tuner layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component, model in models.items():
        m = component_weight(weight, component)
        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer) and hasattr(layer, "set_scale"):
                for adapter in layer.active_adapters:
                    layer.set_scale(adapter, m)


def peft_folder(base: str, kind: str, folder: Path) -> Produced:
    """A PEFT folder (adapter_model.safetensors + adapter_config.json) for the UNet."""
    from peft import get_peft_model
    from peft.tuners.boft import layer as boft

    comps = fresh(base)
    targets = PEFT_OFT_UNET_TARGETS if kind in PEFT_OFT_KINDS else PEFT_UNET_TARGETS
    with patch.object(boft, "get_fbd_cuda", lambda: None):  # never try to compile its kernel
        model = get_peft_model(comps.unet, peft_config(kind, targets))
    randomise_peft(model, torch.Generator().manual_seed(2))
    out = folder / f"peft_{kind}_{base}"
    model.save_pretrained(str(out))

    def reference(weight: Weight) -> Outputs:
        if kind not in PEFT_UNWEIGHTED:
            peft_set_weight({"unet": comps.unet}, weight)
        return forward_all(comps.as_mapping())

    weights = (1.0,) if kind in PEFT_UNWEIGHTED else WEIGHTS
    return Produced(f"peft_{kind}", base, out, reference, weights, targets=("unet",))


def diffusers_files(base: str, kind: str, folder: Path) -> list[Produced]:
    """PEFT adapters on every component, saved by the pipeline's `save_lora_weights` with
    adapter metadata, once in the training scripts' `lora.down` keys and once in raw PEFT
    keys. Text-encoder paths are what this transformers gives (no `text_model.`)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    comps = fresh(base)
    models = comps.as_mapping()
    gen = torch.Generator().manual_seed(3)
    layers, meta = {}, {}
    for component, model in models.items():
        targets = PEFT_UNET_TARGETS if component == "unet" else PEFT_TE_TARGETS
        config = peft_config(kind, targets)
        model.add_adapter(config)
        randomise_peft(model, gen)
        layers[component] = get_peft_model_state_dict(model)
        meta[component] = config.to_dict()
    pipeline = StableDiffusionXLPipeline if base == "sdxl" else StableDiffusionPipeline

    def reference(weight: Weight) -> Outputs:
        peft_set_weight(models, weight)
        return forward_all(models)

    produced = []
    for style, convert in (("diffusers", convert_state_dict_to_diffusers), ("peft_keys", dict)):
        out = folder / f"diffusers_{kind}_{style}_{base}"
        pipeline.save_lora_weights(
            str(out),
            **{f"{c}_lora_layers": convert(sd) for c, sd in layers.items()},
            **{f"{c}_lora_adapter_metadata": md for c, md in meta.items()},
        )
        source = out / "pytorch_lora_weights.safetensors"
        produced.append(Produced(f"diffusers_{kind}_{style}", base, source, reference))
    return produced


def lcm_lora_file(base: str, folder: Path) -> Produced:
    """An LCM-LoRA as the LCM training script wrote it: PEFT LoRA on the UNet, keys renamed
    `base_model.model`→`lora_unet`, `lora_A/B`→`lora_down/up`, all but the last two dots →
    `_`, plus `.alpha` = lora_alpha (diffusers `train_lcm_distill_lora_*`)."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    comps = fresh(base)
    targets = (
        r".*(down_blocks\.1|mid_block|up_blocks\.1)\..*\.(to_q|to_k|to_v|to_out\.0|proj_in|"
        r"proj_out|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2|conv_shortcut|"
        r"downsamplers\.0\.conv|upsamplers\.0\.conv|time_emb_proj)$"
    )
    config = LoraConfig(r=8, lora_alpha=2, target_modules=targets)
    model = get_peft_model(comps.unet, config)
    randomise_peft(model, torch.Generator().manual_seed(4))
    sd = {}
    for key, value in get_peft_model_state_dict(model).items():
        key = key.replace("base_model.model", "lora_unet")
        key = key.replace("lora_A", "lora_down").replace("lora_B", "lora_up")
        key = key.replace(".", "_", key.count(".") - 2)
        sd[key] = value
        if "lora_down" in key:
            sd[f"{key.split('.')[0]}.alpha"] = torch.tensor(float(config.lora_alpha))
    path = save_safetensors(folder / f"lcm_lora_{base}.safetensors", sd, {})

    def reference(weight: Weight) -> Outputs:
        peft_set_weight({"unet": comps.unet}, weight)
        return forward_all(comps.as_mapping())

    return Produced("lcm_lora", base, path, reference, targets=("unet",))


_ATTN_PROCS = {
    "to_q": "to_q_lora",
    "to_k": "to_k_lora",
    "to_v": "to_v_lora",
    "to_out.0": "to_out_lora",
}


def attn_procs_file(base: str, folder: Path) -> Produced:
    """The first diffusers LoRA generation (2023 `save_attn_procs`): UNet attention only, keys
    `<attention>.processor.to_q_lora.down.weight` without a component prefix, no alpha
    (scale 1). Weights come from a PEFT LoRA with lora_alpha = r, whose forward is the
    reference."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    comps = fresh(base)
    targets = r".*(down_blocks\.1|mid_block|up_blocks\.1)\..*\.(to_q|to_k|to_v|to_out\.0)$"
    model = get_peft_model(comps.unet, LoraConfig(r=4, lora_alpha=4, target_modules=targets))
    randomise_peft(model, torch.Generator().manual_seed(6))
    sd = {}
    for key, value in get_peft_model_state_dict(model).items():
        path, factor = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        attention, projection = re.fullmatch(
            r"(.*\.attn\d)\.(to_q|to_k|to_v|to_out\.0)", path
        ).groups()
        updown = {"A.weight": "down", "B.weight": "up"}[factor]
        sd[f"{attention}.processor.{_ATTN_PROCS[projection]}.{updown}.weight"] = value
    path = save_safetensors(folder / f"attn_procs_{base}.safetensors", sd, {})

    def reference(weight: Weight) -> Outputs:
        peft_set_weight({"unet": comps.unet}, weight)
        return forward_all(comps.as_mapping())

    return Produced("attn_procs", base, path, reference, targets=("unet",))
