"""The *file* patching strategy on models as the loaders load them: every UNet and text-encoder
weight of a safetensors single file or diffusers folder is noted as a view of one file tensor
and reads back bit for bit; a kohya LoRA on every linear and convolution patches in place
what swapping patches and restores from the file alone; a file rewritten meanwhile is never
read back; a weight the loader computed (no view of the file) keeps a host copy.

The truth is the loaded model itself (tests/models/test_loading.py proves it is the file cast
once) and the swap strategy, which keeps the original tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from loraworks.lora import LoRAPatcher, LoRARestoreError, apply_loras, load_lora
from loraworks.lora import backups as backups_module
from loraworks.models import singlefile
from loraworks.models.loading import load_pipeline
from loraworks.models.originals import FileOriginals
from tests.fixtures.checkpoints import published_tensors
from tests.fixtures.models import BASES, Components, build_pipeline
from tests.lora.util import assert_bit_exact, kohya_lora, snapshot

PATCHED = ("unet", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A single file per base (fp32) and an SDXL diffusers folder."""
    work = tmp_path_factory.mktemp("originals")
    out = {}
    for base in BASES:
        pipe = build_pipeline(base, work / base)
        out[base] = work / f"tiny-{base}.safetensors"
        save_file(published_tensors(pipe, base), str(out[base]))
        if base == "sdxl":
            pipe.save_pretrained(work / "tiny-sdxl-folder")
            out["sdxl-folder"] = work / "tiny-sdxl-folder"
    return out


def _load(mm, path: Path, dtype: torch.dtype) -> tuple[object, FileOriginals]:
    record = mm.install(path, copy=False, type="main")
    originals = FileOriginals()
    pipe = load_pipeline(record, mm.paths.cache, dtype=dtype, originals=originals)
    return pipe, originals


def _components(pipe, base: str) -> Components:
    return Components(
        base=base,
        unet=pipe.unet,
        text_encoder=pipe.text_encoder,
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
    )


def _only_the_file_fits(monkeypatch, c: Components, originals: FileOriginals) -> None:
    """Room for the temporaries of the largest weight and the host copies of what the file
    does not cover (SDXL's text projection) only: neither swap nor host copies fit."""
    params = [(comp, n, p) for comp, m in c.as_mapping().items() for n, p in m.named_parameters()]
    largest = max(p.numel() for _, _, p in params)
    copies = sum(p.nbytes for comp, n, p in params if not originals.covers(comp, n))
    monkeypatch.setattr(backups_module, "free_bytes", lambda dev: largest * 4 * 2 + copies + 2**16)


@pytest.mark.parametrize(
    ("source", "dtype"),
    [
        ("sd1", torch.bfloat16),
        ("sd2", torch.float16),
        ("sdxl", torch.bfloat16),
        ("sdxl-folder", torch.float16),
    ],
)
def test_every_weight_reads_back_from_the_file_as_it_was_loaded(mm, files, source, dtype):
    pipe, originals = _load(mm, files[source], dtype)
    assert originals.changed() is None
    for component in PATCHED:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        params = dict(module.named_parameters())
        uncovered = [n for n in params if not originals.covers(component, n)]
        # SDXL single files: only CLIP-G's text projection is computed (transposed), and no
        # LoRA targets it; open_clip's q/k/v are views of in_proj, not copies
        assert uncovered == (
            ["text_projection.weight"] if component == "text_encoder_2" and source == "sdxl" else []
        ), component
        read = dict(originals.read(component, [n for n in params if n not in uncovered]))
        assert read.keys() == set(params) - set(uncovered)
        wrong = [n for n, v in read.items() if v.dtype != dtype or not torch.equal(v, params[n])]
        assert wrong == [], f"{component}: {wrong[:3]}"


@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_a_lora_on_every_layer_patches_in_place_and_restores_from_the_file(
    mm, files, base, monkeypatch
):
    pipe, originals = _load(mm, files[base], torch.float16)
    c = _components(pipe, base)
    lora = load_lora((kohya_lora(c, kinds=(nn.Linear, nn.Conv2d), suffixes=None), {}))
    snap = snapshot(c)
    with apply_loras(c.as_mapping(), [(lora, 0.8)], strategy="swap"):
        swapped = snapshot(c)
    _only_the_file_fits(monkeypatch, c, originals)
    addresses = {
        (m, k): p.data_ptr() for m, mod in c.as_mapping().items() for k, p in mod.named_parameters()
    }
    with apply_loras(c.as_mapping(), [(lora, 0.8)], strategy="inplace", originals=originals) as r:
        assert r.strategy == "file"
        assert_bit_exact(c, swapped)
        assert {
            (m, k): p.data_ptr()
            for m, mod in c.as_mapping().items()
            for k, p in mod.named_parameters()
        } == addresses
    assert_bit_exact(c, snap)


def test_a_model_file_rewritten_while_patched_is_not_read_back(mm, files, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(files["sd1"].read_bytes())
    pipe, originals = _load(mm, path, torch.float32)
    c = _components(pipe, "sd1")
    lora = load_lora((kohya_lora(c), {}))
    _only_the_file_fits(monkeypatch, c, originals)
    patcher = LoRAPatcher(c.as_mapping(), strategy="inplace", originals=originals)
    assert patcher.set([(lora, 1.0)]).strategy == "file"
    st = path.stat()
    path.write_bytes(path.read_bytes())  # same bytes, rewritten: it can no longer be trusted
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert "model.safetensors changed on disk" in (originals.changed() or "")
    with pytest.raises(LoRARestoreError, match="changed on disk"):
        patcher.restore()


def test_a_weight_the_loader_computed_keeps_a_host_copy(mm, files, monkeypatch):
    """A weight that is no view of a file tensor is restored from a host copy: here the
    attention queries, made to differ from the file after loading, restore to their loaded
    values (read from the file they would not match their digests)."""
    real = singlefile.storages
    monkeypatch.setattr(
        singlefile,
        "storages",
        lambda state: {p: (k, t) for p, (k, t) in real(state).items() if "to_q.weight" not in k},
    )
    pipe, originals = _load(mm, files["sd1"], torch.float32)
    c = _components(pipe, "sd1")
    computed = [(n, p) for n, p in pipe.unet.named_parameters() if n.endswith("to_q.weight")]
    assert computed and not any(originals.covers("unet", n) for n, _ in computed)
    for _, p in computed:
        p.data.mul_(2)
    snap = snapshot(c)
    lora = load_lora((kohya_lora(c), {}))
    _only_the_file_fits(monkeypatch, c, originals)
    with apply_loras(c.as_mapping(), [(lora, 1.0)], strategy="inplace", originals=originals) as r:
        assert r.strategy == "file"
    assert_bit_exact(c, snap)
    # the host copies count: with no room for them, the file plan does not fit either
    monkeypatch.setattr(backups_module, "free_bytes", lambda dev: 1024)
    with pytest.raises(Exception, match="GiB of cpu memory"):
        LoRAPatcher(c.as_mapping(), strategy="inplace", originals=originals).set([(lora, 1.0)])
    assert_bit_exact(c, snap)
