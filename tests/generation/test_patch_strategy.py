"""`[patch] strategy` through `generate`: the cached model's patcher takes the config's strategy
and the loader's record of where each weight lives in its file, so with memory too short for
any copy a LoRA is patched in place and restored by reading the file again; a model file
replaced on disk while patched so is loaded again, never used with wrong weights.

Truth: the same model loaded afresh from the file as it is on disk (tests/models/test_loading.py
proves a load is the file cast once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from loraworks.generation import generate
from loraworks.generation.cache import cache_for
from loraworks.lora import LoRAError
from loraworks.lora import backups as backups_module
from loraworks.models import ModelManager
from loraworks.models.loading import load_pipeline
from tests.fixtures.models import build_pipeline
from tests.generation.conftest import pipeline_weights, tiny_request
from tests.generation.loras import write_lora


def _write_model(seed: int, folder: Path, work: Path) -> torch.nn.Module:
    """A diffusers folder; written again, each weight file is replaced by a new one under
    the old name, as a download or a copy leaves it."""
    pipe = build_pipeline("sd1", work / f"seed{seed}", seed=seed)
    pipe.save_pretrained(work / f"saved{seed}")
    for new in (work / f"saved{seed}").rglob("*.safetensors"):
        target = folder / new.relative_to(work / f"saved{seed}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, target)
    for other in (work / f"saved{seed}").rglob("*"):
        target = folder / other.relative_to(work / f"saved{seed}")
        if other.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(other, target)
    return pipe


@pytest.fixture(params=["inplace"])
def inplace_root(tmp_path, monkeypatch, request):
    """A root whose config asks for in-place patching, an SD1 model installed where it lies
    and one LoRA; memory is short for any copy of the patched weights, so only the file
    strategy fits."""
    ckpt = tmp_path / "model"
    pipe = _write_model(0, ckpt, tmp_path)
    lora = write_lora(pipe, tmp_path / "lora.safetensors", seed=1)
    largest = max(
        p.numel() for m in (pipe.unet, pipe.text_encoder) for p in m.parameters()
    )  # the plan's temporaries: an fp32 copy of one weight and its sum
    monkeypatch.setattr(backups_module, "free_bytes", lambda dev: largest * 4 * 2 + 2**16)
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text(
        f'[compute]\ndevice = "cpu"\n[patch]\nstrategy = "{request.param}"\n'
    )
    mm = ModelManager.open(root, scan=False)
    main = mm.install(ckpt, copy=False, name="model", type="main")
    mm.install(lora, name="lora", type="lora")
    yield mm, main, ckpt
    mm.close()


def _unet_and_te(pipe) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in pipeline_weights(pipe).items() if k.startswith(("unet.", "text_encoder."))
    }


def _assert_equal(pipe, truth: dict[str, torch.Tensor]) -> None:
    now = _unet_and_te(pipe)
    assert now.keys() == truth.keys()
    assert [k for k in truth if not torch.equal(now[k], truth[k])] == []


def test_the_config_strategy_patches_in_place_and_restores_from_the_file(inplace_root):
    mm, main, _ = inplace_root
    truth = _unet_and_te(load_pipeline(main, mm.paths.cache))
    generate(tiny_request("sd1", model="model", prompt="a cat <lora:lora:1>"), manager=mm)
    (loaded,) = cache_for(mm).loaded()
    assert loaded.patcher.report.strategy == "file"
    assert loaded.patcher.current  # still patched, in the model's own storage
    generate(tiny_request("sd1", model="model"), manager=mm)
    _assert_equal(loaded.pipe, truth)
    assert cache_for(mm).loads == 1


def test_a_model_file_replaced_while_patched_is_loaded_again(inplace_root, tmp_path):
    mm, main, ckpt = inplace_root
    generate(tiny_request("sd1", model="model", prompt="a cat <lora:lora:1>"), manager=mm)
    cache = cache_for(mm)
    (before,) = cache.loaded()
    _write_model(5, ckpt, tmp_path)  # other weights, same file names
    truth = _unet_and_te(load_pipeline(main, mm.paths.cache))
    result = generate(tiny_request("sd1", model="model"), manager=mm)  # restore needed
    assert result.images
    (after,) = cache.loaded()
    assert after is not before and cache.loads == 2
    _assert_equal(after.pipe, truth)


@pytest.mark.parametrize("inplace_root", ["swap"], indirect=True)
def test_swap_asked_with_memory_short_names_the_setting_and_patches_nothing(inplace_root):
    mm, main, _ = inplace_root
    truth = _unet_and_te(load_pipeline(main, mm.paths.cache))
    with pytest.raises(LoRAError, match=r'set \[patch\] strategy = "inplace"'):
        generate(tiny_request("sd1", model="model", prompt="a cat <lora:lora:1>"), manager=mm)
    (loaded,) = cache_for(mm).loaded()
    _assert_equal(loaded.pipe, truth)
    assert not any(mm.paths.outputs.rglob("*.png"))
