"""SDXL kohya files are written with the original sgm UNet names and ``lora_te1_``/``lora_te2_``,
as sd-scripts writes them (what A1111, Forge and ComfyUI expect), by every tool that writes
kohya; reading one back patches exactly what the written LoRA patches. The truth for the names
is `tests/lora_parity/sgm.py`, written from the SDXL layout independently of the engine."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from loraworks.lora import LoRAPatcher, load_lora
from loraworks.lora.tools import RankRule, convert, extract, merge, resize, save_lora
from tests.fixtures.models import build_components
from tests.lora.util import kohya_lora, kohya_name, targets

from .helpers import patched

EVERY = dict(kinds=(nn.Linear, nn.Conv2d), suffixes=())


@pytest.fixture(scope="module")
def sdxl():
    """The tiny SDXL, and a LoRA/LoCon (sgm names) on every linear and conv it has but the
    text projection (no trainer targets it)."""
    comps = build_components("sdxl")
    sd = kohya_lora(comps, rank=4, alpha=2.0, seed=5, scale=0.05, **EVERY)
    sd = {k: v for k, v in sd.items() if "text_projection" not in k}
    return comps, sd


def _sgm_spelling(comps) -> set[str]:
    """The kohya module name of every linear and conv, UNet names as sgm names."""
    return {kohya_name("sdxl", comp, name) for comp, name, _, _ in targets(comps, **EVERY)}


def _written(tool: str, comps, sd, tmp_path):
    src = load_lora((sd, {}), name="src")
    path = tmp_path / f"{tool}.safetensors"
    if tool == "convert":
        return src, convert(load_lora(convert(src, "peft", tmp_path / "p")), "kohya", path)
    if tool == "resize":
        lora = resize(src, RankRule(rank=3)).lora
    elif tool == "merge":
        other = load_lora((kohya_lora(comps, rank=2, alpha=1.0, seed=9), {}), name="b")
        lora = merge([(src, 1.0), (other, 0.5)]).lora
    else:
        tuned = build_components("sdxl")
        LoRAPatcher(tuned.as_mapping()).set([(src, 1.0)])
        lora = extract(comps.as_mapping(), tuned.as_mapping(), RankRule(rank=4)).lora
    return lora, save_lora(lora, path)


@pytest.mark.parametrize("tool", ["convert", "resize", "merge", "extract"])
def test_sdxl_kohya_files_name_modules_as_sd_scripts_does(sdxl, tmp_path, tool):
    comps, sd = sdxl
    lora, path = _written(tool, comps, sd, tmp_path)
    names = {key.split(".", 1)[0] for key in load_file(str(path))}
    assert names <= _sgm_spelling(comps), sorted(names - _sgm_spelling(comps))[:5]
    prefixes = {n.split("_", 2)[0] + "_" + n.split("_", 2)[1] for n in names}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    if tool != "merge":  # every source module (convs, samplers, embeddings) comes back named
        assert names == {key.split(".", 1)[0] for key in sd}
    back = load_lora(path)
    assert len(back.layers) == len(lora.layers)
    got, want = patched(comps, [(back, 1.0)]), patched(comps, [(lora, 1.0)])
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_sdxl_kohya_file_keeps_the_source_files_content(sdxl, tmp_path):
    """kohya (sgm) → diffusers → kohya writes the very tensors of the source file."""
    _, sd = sdxl
    src = load_lora((sd, {}))
    back = load_file(
        str(
            convert(
                load_lora(convert(src, "diffusers", tmp_path / "d.safetensors")),
                "kohya",
                tmp_path / "k.safetensors",
            )
        )
    )
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
