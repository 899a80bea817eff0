"""Key families end to end on the tiny models: diffusers (3 generations), PEFT folders,
LyCORIS kinds in kohya files, and diffusers' own loader as a reference for a kohya file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from loraworks.lora import apply_loras, load_lora
from tests.fixtures.models import build_components
from tests.lora.util import kohya_name, targets

R = 4


@pytest.fixture(scope="module")
def comps():
    return {b: build_components(b) for b in ("sd1", "sdxl")}


def _factors(mod, seed):
    g = torch.Generator().manual_seed(seed)
    w = mod.weight
    return torch.randn(R, w.shape[1], generator=g) * 0.1, torch.randn(
        w.shape[0], R, generator=g
    ) * 0.1


_TE_PROC = {
    "q_proj": "to_q_lora",
    "k_proj": "to_k_lora",
    "v_proj": "to_v_lora",
    "out_proj": "to_out_lora",
}
_UNET_PROC = {
    "to_q": "to_q_lora",
    "to_k": "to_k_lora",
    "to_v": "to_v_lora",
    "to_out.0": "to_out_lora",
}


def _diffusers_sd(c, generation):
    sd, expect = {}, {}
    for i, (comp, name, real, mod) in enumerate(targets(c)):
        down, up = _factors(mod, i)
        expect[(comp, real)] = up @ down
        if generation == 1:
            table = _TE_PROC if comp != "unet" else _UNET_PROC
            suffix = next(s for s in table if name.endswith("." + s))
            stem = f"{comp}.{name[: -len(suffix) - 1]}.processor.{table[suffix]}"
            if comp != "unet":
                stem = stem.replace(".processor", "")
            sd[stem + ".down.weight"], sd[stem + ".up.weight"] = down, up
        elif generation == 2:
            mid = "lora_linear_layer" if comp != "unet" else "lora"
            sd[f"{comp}.{name}.{mid}.down.weight"], sd[f"{comp}.{name}.{mid}.up.weight"] = down, up
        else:
            sd[f"{comp}.{name}.lora_A.weight"], sd[f"{comp}.{name}.lora_B.weight"] = down, up
    return sd, expect


def _check(c, lora, expect, weight, scale):
    before = {k: c.as_mapping()[k[0]].get_submodule(k[1]).weight.detach().clone() for k in expect}
    with apply_loras(c.as_mapping(), [(lora, weight)]) as report:
        assert not report.unmatched, report.unmatched[:3]
        for k, d in expect.items():
            got = c.as_mapping()[k[0]].get_submodule(k[1]).weight
            torch.testing.assert_close(got, before[k] + weight * scale * d, rtol=0, atol=1e-6)


@pytest.mark.parametrize("generation", [1, 2, 3])
@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_diffusers_generations(comps, base, generation):
    c = comps[base]
    sd, expect = _diffusers_sd(c, generation)
    lora = load_lora((sd, {}))
    assert lora.format == "diffusers" and lora.base == base
    assert {k.split(".")[0] for k in lora.layers} == set(c.as_mapping())
    _check(c, lora, expect, 0.7, 1.0)  # no alpha anywhere: alpha = rank


def test_diffusers_alpha_from_adapter_metadata(comps):
    c = comps["sd1"]
    sd, expect = _diffusers_sd(c, 3)
    cfg = {"unet.r": R, "unet.lora_alpha": 2, "text_encoder.r": R, "text_encoder.lora_alpha": 8}
    meta = {"lora_adapter_metadata": json.dumps(cfg)}
    lora = load_lora((sd, meta))
    unet_expect = {k: v for k, v in expect.items() if k[0] == "unet"}
    te_expect = {k: v for k, v in expect.items() if k[0] != "unet"}
    _check(c, lora, unet_expect, 1.0, 0.5)
    _check(c, lora, te_expect, 1.0, 2.0)


def test_old_unprefixed_attention_processor_file(comps):
    c = comps["sd1"]
    sd, expect = _diffusers_sd(c, 1)
    sd = {k[len("unet.") :]: v for k, v in sd.items() if k.startswith("unet.")}
    lora = load_lora((sd, {}))
    _check(c, lora, {k: v for k, v in expect.items() if k[0] == "unet"}, 1.0, 1.0)


def test_diffusers_folder_and_peft_folders(tmp_path, comps):
    c = comps["sdxl"]
    sd, expect = _diffusers_sd(c, 3)
    (tmp_path / "d").mkdir()
    save_file(sd, str(tmp_path / "d" / "pytorch_lora_weights.safetensors"))
    assert load_lora(tmp_path / "d").format == "diffusers"
    # PEFT: one folder per component, from the sub-folder names
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        sub = tmp_path / "p" / comp
        sub.mkdir(parents=True)
        part = {
            "base_model.model." + k[len(comp) + 1 :]: v
            for k, v in sd.items()
            if k.split(".")[0] == comp
        }
        save_file(part, str(sub / "adapter_model.safetensors"))
        cfg = {"peft_type": "LORA", "r": R, "lora_alpha": 2 * R, "target_modules": ["to_q"]}
        (sub / "adapter_config.json").write_text(json.dumps(cfg))
    lora = load_lora(tmp_path / "p")
    assert lora.format == "peft" and lora.base == "sdxl"
    assert {k.split(".")[0] for k in lora.layers} == {"unet", "text_encoder", "text_encoder_2"}
    _check(c, lora, expect, 0.5, 2.0)
    # a single PEFT folder: the component comes from module names and widths
    lora = load_lora(tmp_path / "p" / "text_encoder_2")
    assert {k.split(".")[0] for k in lora.layers} == {"text_encoder_2"}


def test_lycoris_kinds_in_a_kohya_file(comps):
    c = comps["sd1"]
    g = torch.Generator().manual_seed(3)
    sd, mods = {}, {}
    kinds = ["loha", "lokr", "ia3", "full", "dora"]
    for i, (comp, name, real, mod) in enumerate(targets(c)[:20]):
        key = kohya_name("sd1", comp, name)
        out, inn = mod.weight.shape
        kind = kinds[i % len(kinds)]
        mods[(comp, real)] = kind
        if kind == "loha":
            for s in ("1", "2"):
                sd[f"{key}.hada_w{s}_a"] = torch.randn(out, 2, generator=g) * 0.3
                sd[f"{key}.hada_w{s}_b"] = torch.randn(2, inn, generator=g) * 0.3
            sd[f"{key}.alpha"] = torch.tensor(1.0)
        elif kind == "lokr":
            sd[f"{key}.lokr_w1"] = torch.randn(2, 2, generator=g)
            sd[f"{key}.lokr_w2"] = torch.randn(out // 2, inn // 2, generator=g) * 0.01
            sd[f"{key}.alpha"] = torch.tensor(123.0)  # ignored: both factors full
        elif kind == "ia3":
            sd[f"{key}.weight"] = torch.randn(out, generator=g) * 0.1
            sd[f"{key}.on_input"] = torch.tensor(0)
        elif kind == "full":
            sd[f"{key}.diff"] = torch.randn(out, inn, generator=g) * 0.01
        else:
            sd[f"{key}.lora_down.weight"] = torch.randn(2, inn, generator=g) * 0.1
            sd[f"{key}.lora_up.weight"] = torch.randn(out, 2, generator=g) * 0.1
            sd[f"{key}.dora_scale"] = mod.weight.detach().norm(dim=1, keepdim=True) * 1.1
    lora = load_lora((sd, {}))
    assert lora.format == "lycoris"
    assert set(lora.kinds) == {"loha", "lokr", "ia3", "full", "dora(lora)"}
    snap = {k: c.as_mapping()[k[0]].get_submodule(k[1]).weight.detach().clone() for k in mods}
    with apply_loras(c.as_mapping(), [(lora, 1.0)]) as report:
        assert report.applied == len(mods) and not report.unmatched
        for k, kind in mods.items():
            w0 = snap[k]
            got = c.as_mapping()[k[0]].get_submodule(k[1]).weight
            layer = lora.layers[
                f"{k[0]}.{k[1]}"
                if k[0] == "unet"
                else f"{k[0]}.text_model.{k[1]}".replace("text_model.text_model.", "text_model.")
            ]
            want = w0 + layer.residuals({"weight": w0, "bias": None}, 1.0)["weight"]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
            if kind == "ia3":
                torch.testing.assert_close(got, w0 * (1 + layer.vector)[:, None], rtol=0, atol=1e-6)


def test_kohya_file_matches_diffusers_fuse(tmp_path):
    """Reference: diffusers load_lora_weights + fuse_lora on the same kohya SD1 file."""
    from diffusers import StableDiffusionPipeline  # noqa: F401 (pipeline class used below)

    from tests.fixtures.models import build_pipeline
    from tests.lora.util import kohya_lora

    pipe = build_pipeline("sd1", tmp_path / "pipe")
    c = build_components("sd1")
    sd = kohya_lora(c, rank=4, alpha=2.0)
    save_file(sd, str(tmp_path / "k.safetensors"))
    ours = load_lora(tmp_path / "k.safetensors")
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    with apply_loras(pipe, [(ours, 0.6)]):
        mine = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    pipe.load_lora_weights(str(tmp_path / "k.safetensors"))
    pipe.fuse_lora(lora_scale=0.6)
    theirs = {
        n.replace(".base_layer", ""): p.detach()
        for n, p in pipe.unet.named_parameters()
        if "lora_" not in n
    }
    changed = 0
    for n, w in mine.items():
        torch.testing.assert_close(w, theirs[n], rtol=0, atol=1e-6)
        changed += not torch.equal(w, before[n])
    assert changed == 2 * len([k for k in ours.layers if k.startswith("unet.")]) // 2
