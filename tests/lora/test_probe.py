"""Base detection from shapes, independent of key order; clear errors when it cannot decide."""

from __future__ import annotations

import random

import pytest
import torch

from loraworks.lora import LoRAFormatError, load_lora
from tests.fixtures.models import BASES, build_components
from tests.lora.util import ATTN, kohya_lora


@pytest.fixture(scope="module")
def comps():
    return {b: build_components(b) for b in BASES}


def _shuffled(sd, seed):
    items = list(sd.items())
    random.Random(seed).shuffle(items)
    return dict(items)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("seed", range(3))
def test_base_from_shapes_in_any_key_order(comps, base, seed):
    sd = kohya_lora(comps[base])
    assert load_lora((_shuffled(sd, seed), {})).base == base


@pytest.mark.parametrize("base", BASES)
def test_unet_only_and_text_encoder_only(comps, base):
    unet = {k: v for k, v in kohya_lora(comps[base]).items() if k.startswith("lora_unet_")}
    assert load_lora((_shuffled(unet, 1), {})).base == base
    te = {k: v for k, v in kohya_lora(comps[base]).items() if not k.startswith("lora_unet_")}
    lora = load_lora((te, {}))
    assert lora.base == base
    if base == "sd1":  # CLIP-L alone also fits SDXL's first text encoder
        assert lora.compatible_bases == {"sd1", "sdxl"}


def test_sdxl_without_cross_attention_layers_by_structure(comps):
    # only self-attention in the deep SDXL blocks: transformer_blocks index >= 2 decides
    sd = kohya_lora(comps["sdxl"], suffixes=("attn1.to_q",))
    sd = {k: v for k, v in sd.items() if k.startswith("lora_unet_")}
    lora = load_lora((sd, {}))
    assert lora.base == "sdxl"
    assert any("transformer_blocks index" in e for e in lora.base_evidence)


def test_lcm_sdxl_layout_diffusers_names_on_sdxl(comps):
    """LCM-LoRA SDXL: kohya prefix with diffusers names; first keys are resnets (no width)."""
    sd = {}
    for n, m in comps["sdxl"].unet.named_modules():
        if n.endswith(("conv1", "time_emb_proj", "to_k")):
            w = m.weight
            key = "lora_unet_" + n.replace(".", "_")
            sd[key + ".lora_down.weight"] = torch.zeros(2, *w.shape[1:])
            sd[key + ".lora_up.weight"] = torch.zeros(
                w.shape[0], 2, *([1, 1] if w.dim() == 4 else [])
            )
            sd[key + ".alpha"] = torch.tensor(1.0)
    lora = load_lora((sd, {}))
    assert lora.base == "sdxl" and lora.unet_names == "diffusers" and lora.format == "kohya"


def test_metadata_is_only_a_hint(comps):
    sd = kohya_lora(comps["sd1"])
    lora = load_lora((sd, {"ss_base_model_version": "sdxl_base_v1-0"}))
    assert lora.base == "sd1"
    assert any("trusting the tensors" in w for w in lora.warnings)


def test_metadata_decides_when_tensors_cannot(comps):
    # conv-only LoRA on resnets: no width evidence
    sd = kohya_lora(comps["sd2"], suffixes=("resnets.0.conv1",), kinds=(torch.nn.Conv2d,))
    # a 4th level says sd1/sd2 but not which: taken as sd1, applies to both, with a warning
    lora = load_lora((sd, {}))
    assert lora.base == "sd1" and lora.compatible_bases == {"sd1", "sd2"} and lora.warnings
    sd = {k: v for k, v in sd.items() if "blocks_3" not in k}
    with pytest.raises(LoRAFormatError, match="cannot tell the base"):
        load_lora((sd, {}))
    assert load_lora((sd, {"ss_v2": "True"})).base == "sd2"
    assert (
        load_lora((sd, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})).base
        == "sdxl"
    )
    assert load_lora((sd, {}), base="sd2").base == "sd2"


def test_contradiction_is_an_error(comps):
    sd1 = kohya_lora(comps["sd1"], suffixes=ATTN)
    sdxl_te2 = {k: v for k, v in kohya_lora(comps["sdxl"]).items() if k.startswith("lora_te2_")}
    with pytest.raises(LoRAFormatError, match="contradicts itself"):
        load_lora(({**sd1, **sdxl_te2}, {}))


def test_unknown_width_is_an_error():
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    sd = {
        key + ".lora_down.weight": torch.zeros(2, 512),
        key + ".lora_up.weight": torch.zeros(8, 2),
    }
    with pytest.raises(LoRAFormatError, match="cross-attention width 512"):
        load_lora((sd, {}))
