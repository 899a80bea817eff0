"""`bake --single-file` writes one file in the published (LDM/sgm) layout of SD1, SD2 and SDXL:
(a) its keys and shapes are the published layout's (`tests/fixtures/checkpoints.py`); (b) its
tensors are those of the baked pipeline mapped by the test-only `tests/models/ldm_layout.py`
(written from the published mapping, independently of the writer); (c) loaded back through the
manager it gives bit for bit what `apply_loras` patches, in fp32, fp16 and bf16. Bad input is
refused before anything is written."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from loraworks.lora import LoRAError, apply_loras, load_lora
from loraworks.lora.tools import LoRAToolError, OutputExists, bake
from loraworks.lora.tools import write as write_module
from tests.fixtures.checkpoints import published_layout
from tests.fixtures.models import build_components, build_pipeline
from tests.lora.util import kohya_lora
from tests.models.ldm_layout import sd1_to_ldm, sd2_to_ldm, sdxl_to_ldm

TO_LDM = {"sd1": sd1_to_ldm, "sd2": sd2_to_ldm, "sdxl": sdxl_to_ldm}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: what published files hold in a fixed dtype (the DDPM schedule, CLIP-L's position ids)
FIXED = {"betas": torch.float32, "alphas_cumprod": torch.float32, "position_ids": torch.int64}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _stack(base: str):
    """A LoRA/LoCon on every linear and conv of the UNet and text encoders."""
    sd = kohya_lora(
        build_components(base),
        rank=4,
        alpha=2.0,
        seed=3,
        scale=0.05,
        kinds=(nn.Linear, nn.Conv2d),
        suffixes=(),
    )
    sd = {k: v for k, v in sd.items() if "text_projection" not in k}
    return [(load_lora((sd, {}), name="every"), 0.8)]


def _parts(pipe) -> dict[str, nn.Module]:
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {n: m for n in names if (m := getattr(pipe, n, None)) is not None}


@pytest.mark.parametrize("base", ["sd1", "sd2", "sdxl"])
def test_single_file_has_the_published_layout_and_the_baked_tensors(tmp_path, base):
    pipe = build_pipeline(base, tmp_path / "src").to(dtype=torch.float16)
    stack = _stack(base)
    out = bake(pipe, stack, tmp_path / "baked.safetensors", single_file=True)
    got = load_file(str(out))
    layout = published_layout(base, "tiny")
    assert got.keys() == layout.keys()
    for key, (shape, _) in layout.items():
        fixed = next((d for name, d in FIXED.items() if key.endswith(name)), torch.float16)
        assert tuple(got[key].shape) == shape and got[key].dtype == fixed, key
    unpatched = TO_LDM[base](pipe)
    with apply_loras(_parts(pipe), stack):
        want = {k: v.clone() for k, v in TO_LDM[base](pipe).items()}
    assert all(torch.equal(got[k], v) for k, v in want.items())
    changed = sum(not torch.equal(v, unpatched[k]) for k, v in want.items())
    assert changed >= 40  # the LoRA is in the file
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize("base", ["sd1", "sd2", "sdxl"])
def test_full_size_layout_on_the_meta_device(base):
    """The published architectures' numbering (SD1.5: 12 input blocks, SD2: 23+1 open_clip
    blocks, SDXL: 10-deep transformers), shapes only, nothing allocated."""
    from types import SimpleNamespace

    from diffusers import EulerDiscreteScheduler

    from loraworks.lora.tools.single_file import ldm_state_dict
    from tests.fixtures.models import SD_SCHEDULER_CONFIG

    with torch.device("meta"):
        c = build_components(base, "full", with_vae=True)
    pipe = SimpleNamespace(**vars(c), scheduler=EulerDiscreteScheduler(**SD_SCHEDULER_CONFIG))
    got = ldm_state_dict(pipe, base)
    layout = published_layout(base, "full")
    assert got.keys() == layout.keys()
    assert all(tuple(got[k].shape) == shape for k, (shape, _) in layout.items())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("base", ["sd1", "sd2", "sdxl"])
def test_single_file_loads_back_as_what_apply_loras_patches(tmp_path, base, dtype):
    from loraworks.models import ModelManager

    pipe = build_pipeline(base, tmp_path / "src").to(dtype=dtype)
    stack = _stack(base)
    out = bake(pipe, stack, tmp_path / f"tiny-{base}.safetensors", single_file=True)
    with apply_loras(_parts(pipe), stack):
        want = {
            n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in _parts(pipe).items()
        }
    mm = ModelManager.open(tmp_path / "root")
    try:
        record = mm.install(out)
        assert (record.type, record.base, record.format) == ("main", base, "checkpoint")
        back = mm.load_main(record, dtype=dtype)
    finally:
        mm.close()
    for name, module in _parts(back).items():
        sd = module.state_dict()
        assert sd.keys() == want[name].keys(), name
        bad = [
            k for k, v in want[name].items() if not (sd[k].dtype == dtype and torch.equal(sd[k], v))
        ]
        assert not bad, f"{name}: {bad[:3]}"


def test_single_file_bad_input_is_refused_before_any_work(tmp_path, monkeypatch):
    pipe = build_pipeline("sd1", tmp_path / "src")
    stack = _stack("sd1")
    existing = tmp_path / "x.safetensors"
    existing.write_bytes(b"old")
    with pytest.raises(OutputExists):
        bake(pipe, stack, existing, single_file=True)
    assert existing.read_bytes() == b"old"
    with pytest.raises(LoRAToolError, match=r"NAME\.safetensors"):
        bake(pipe, stack, tmp_path / "folder", single_file=True)
    with pytest.raises(LoRAToolError, match="no LoRA"):
        bake(pipe, [], tmp_path / "y.safetensors", single_file=True)
    sdxl = _stack("sdxl")
    with pytest.raises(LoRAError, match="base"):  # a LoRA of another base
        bake(pipe, sdxl, tmp_path / "z.safetensors", single_file=True)

    def broken(sd, path, meta):
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(write_module, "_save", broken)
    with pytest.raises(OSError, match="disk full"):
        bake(pipe, stack, tmp_path / "w.safetensors", single_file=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "x.safetensors"]
