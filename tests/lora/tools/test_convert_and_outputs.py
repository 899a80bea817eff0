"""convert kohya → diffusers → peft → kohya keeps every layer exactly; outputs are atomic: an
existing path is refused without force, a write failing midway leaves nothing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from loraworks.lora import load_lora
from loraworks.lora.tools import OutputExists, RankRule, UnsupportedKind, convert, resize, save_lora
from loraworks.lora.tools import write as write_module
from tests.fixtures.models import build_components
from tests.lora.util import kohya_lora


def _same_layers(a, b) -> None:
    assert set(a.layers) == set(b.layers)
    for target, la in a.layers.items():
        lb = b.layers[target]
        assert torch.equal(la.up, lb.up) and torch.equal(la.down, lb.down), target
        assert la.scale == lb.scale, target


@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_kohya_diffusers_peft_kohya_keeps_every_layer_exactly(tmp_path, base):
    sd = kohya_lora(build_components(base), rank=6, alpha=3.3, seed=4)
    src = load_lora((sd, {}), name="src")
    d = load_lora(convert(src, "diffusers", tmp_path / "d.safetensors"))
    p = load_lora(convert(d, "peft", tmp_path / "p"))
    k_path = convert(p, "kohya", tmp_path / "k.safetensors")
    k = load_lora(k_path)
    assert (d.format, p.format, k.format) == ("diffusers", "peft", "kohya")
    for other in (d, p, k):
        _same_layers(src, other)
    # kohya names (diffusers names on SD1, sgm names on SDXL) come back: the same file content
    back = load_file(str(k_path))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[key], sd[key]) for key in sd)


def test_kohya_metadata_is_updated(tmp_path):
    meta = {"ss_network_dim": "6", "ss_output_name": "x", "sshs_model_hash": "stale"}
    src = load_lora((kohya_lora(build_components("sd1"), rank=6), meta))
    out = resize(src, RankRule(method="sv_fro", target=0.5))
    path = save_lora(out.lora, tmp_path / "r.safetensors")
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    assert header["ss_network_dim"] == "Dynamic" and header["ss_output_name"] == "x"
    assert header["ss_network_module"] == "networks.lora"
    assert json.loads(header["loraworks_tool"])["tool"] == "resize"
    assert len(header["sshs_model_hash"]) == 64


def test_diffusers_refuses_kinds_it_cannot_carry(tmp_path):
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    loha = {
        f"{key}.hada_w1_a": torch.randn(32, 2),
        f"{key}.hada_w1_b": torch.randn(2, 768),
        f"{key}.hada_w2_a": torch.randn(32, 2),
        f"{key}.hada_w2_b": torch.randn(2, 768),
    }
    with pytest.raises(UnsupportedKind, match="resize"):
        convert(load_lora((loha, {}), base="sd1"), "diffusers", tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_refused_without_force(tmp_path):
    lora = load_lora((kohya_lora(build_components("sd1")), {}))
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExists, match="--force"):
        save_lora(lora, out)
    assert out.read_bytes() == b"keep me"
    save_lora(lora, out, force=True)
    assert load_lora(out).layers.keys() == lora.layers.keys()


@pytest.mark.parametrize("to", ["kohya", "diffusers", "peft"])
def test_a_write_failing_midway_leaves_nothing(tmp_path, monkeypatch, to):
    lora = load_lora((kohya_lora(build_components("sdxl")), {}))
    calls = []

    def broken(sd, path, meta):
        calls.append(path)
        if len(calls) == 2 or to != "peft":  # peft: the second component's file fails
            path.write_bytes(b"half a file")
            raise OSError("disk full")
        path.write_bytes(b"whole")

    monkeypatch.setattr(write_module, "_save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_lora(lora, tmp_path / "out", to)
    assert list(tmp_path.iterdir()) == []


def test_an_rslora_scale_survives_conversion_to_kohya(tmp_path):
    """PEFT rsLoRA scales α/√r; kohya stores α (float32) for α/r: an α is found that gives the
    very same scale (α/√r·r is not a float32 here)."""
    src = load_lora((kohya_lora(build_components("sd1"), rank=6), {}))
    folder = convert(src, "peft", tmp_path / "p")
    for cfg_path in folder.glob("*/adapter_config.json"):
        cfg = json.loads(cfg_path.read_text())
        cfg.update(use_rslora=True, lora_alpha=4, alpha_pattern={})
        cfg_path.write_text(json.dumps(cfg))
    peft = load_lora(folder)
    assert {ly.scale for ly in peft.layers.values()} == {4 / 6**0.5}
    _same_layers(peft, load_lora(convert(peft, "kohya", tmp_path / "k.safetensors")))
