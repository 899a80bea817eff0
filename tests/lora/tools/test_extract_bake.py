"""extract from (base, base with a LoRA baked in) gives the LoRA's ΔW back; bake writes exactly
the weights apply_loras patches, in fp32, fp16 and bf16; models of different bases or
architectures are refused."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from loraworks.lora import LoRAPatcher, apply_loras, load_lora
from loraworks.lora.tools import IncompatibleModels, RankRule, bake, extract
from tests.fixtures.models import build_components, build_pipeline, unet_config
from tests.lora.util import kohya_lora

from .helpers import hand_delta, module_keys


@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_extract_at_rank_at_or_above_the_loras_gives_its_delta_back(base):
    orig, tuned = build_components(base), build_components(base)  # same seed: same weights
    sd = kohya_lora(orig, rank=4, alpha=2.0, seed=7)
    LoRAPatcher(tuned.as_mapping()).set([(load_lora((sd, {})), 1.0)])  # stays patched
    result = extract(orig.as_mapping(), tuned.as_mapping(), RankRule(rank=6))
    keys = module_keys(orig)
    assert set(result.lora.layers) == set(keys.values())
    num = den = 0.0
    for key, target in keys.items():
        layer = result.lora.layers[target]
        got = layer.scale * layer.up.double().flatten(1) @ layer.down.double().flatten(1)
        want = hand_delta(sd, key)
        num += float((got - want).pow(2).sum())
        den += float(want.pow(2).sum())
    assert (num / den) ** 0.5 <= 1e-4


def test_extract_refuses_models_of_other_bases_or_architectures():
    sd1, sd2 = build_components("sd1"), build_components("sd2")
    with pytest.raises(IncompatibleModels, match="bases"):
        extract(sd1.as_mapping(), sd2.as_mapping(), RankRule(rank=4))
    other = dict(sd1.as_mapping())
    cfg = unet_config("sd1") | {"block_out_channels": (32, 64, 64, 64)}
    other["unet"] = UNet2DConditionModel(**cfg)
    with pytest.raises(IncompatibleModels, match="architecture"):
        extract(sd1.as_mapping(), other, RankRule(rank=4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bake_writes_what_apply_loras_patches_bit_for_bit(tmp_path, dtype):
    pipe = build_pipeline("sd1", tmp_path / "src").to(dtype=dtype)
    comps = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    lora = load_lora((kohya_lora(build_components("sd1"), rank=4, alpha=2.0, seed=3), {}))
    stack = [(lora, 0.8)]
    before = {f"{c}.{k}": v.clone() for c, m in comps.items() for k, v in m.state_dict().items()}
    out = bake(pipe, stack, tmp_path / "baked")
    with apply_loras(comps, stack):
        want = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in comps.items()}
    files = {
        "unet": out / "unet" / "diffusion_pytorch_model.safetensors",
        "text_encoder": out / "text_encoder" / "model.safetensors",
    }
    changed = 0
    for comp, path in files.items():
        got = load_file(str(path))
        for k, v in want[comp].items():
            if k not in got:
                continue  # tied or non-persistent entries save_pretrained leaves out
            assert got[k].dtype == dtype and torch.equal(got[k], v), f"{comp}.{k}"
            changed += not torch.equal(v, before[f"{comp}.{k}"])
    assert changed >= 20
    now = {f"{c}.{k}": v for c, m in comps.items() for k, v in m.state_dict().items()}
    assert all(torch.equal(now[k], before[k]) for k in before)  # restored after the bake
