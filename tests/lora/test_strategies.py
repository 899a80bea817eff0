"""Patching strategies: swap, in place with host copies, in place with the originals re-read
from the model file. Each patches the same bits and restores bit-exactly, in fp32, fp16 and
bf16, on a normal exit and on an exception, on tiny SD1/SD2/SDXL models; a model file that
changed is detected, never read back silently."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from loraworks.lora import LoRAError, LoRAPatcher, LoRARestoreError, apply_loras, load_lora
from loraworks.lora import backups as backups_module
from tests.fixtures.models import build_components
from tests.lora.util import assert_bit_exact, kohya_lora, snapshot

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class FileOriginals:
    """The components' weights as saved to one safetensors file each (what a loader that
    loaded them from there would read back); identity = size, mtime and inode."""

    def __init__(self, components, folder: Path):
        self.files: dict[str, Path] = {}
        for comp, module in components.as_mapping().items():
            path = folder / f"{comp}.safetensors"
            state = {k: v.detach().contiguous().clone() for k, v in module.named_parameters()}
            save_file(state, str(path))
            self.files[comp] = path
        self.identity = {c: self._stat(p) for c, p in self.files.items()}

    @staticmethod
    def _stat(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns, st.st_ino

    def changed(self) -> str | None:
        for comp, path in self.files.items():
            if self._stat(path) != self.identity[comp]:
                return f"{path.name} changed on disk since the model was loaded"
        return None

    def covers(self, component: str, name: str) -> bool:
        return component in self.files

    def read(self, component: str, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
        with safe_open(str(self.files[component]), "pt") as f:
            keys = set(f.keys())
            yield from ((n, f.get_tensor(n)) for n in names if n in keys)


def _model(base: str, dtype: torch.dtype):
    c = build_components(base)
    for m in c.as_mapping().values():
        m.to(dtype)
    # attention linears and every conv: weights of every shape, LoRA and LoCon layers
    lora = load_lora((kohya_lora(c, kinds=(nn.Linear, nn.Conv2d), suffixes=None), {}))
    return c, lora


def _only_the_file_fits(monkeypatch, c) -> None:
    """Free memory for the temporaries of the largest module only: swap and host copies do
    not fit, the file does."""
    largest = max(p.numel() for m in c.as_mapping().values() for p in m.parameters())
    free = largest * 4 * 2 + 2**16
    monkeypatch.setattr(backups_module, "free_bytes", lambda dev: free)


@pytest.fixture(params=["sd1", "sd2", "sdxl"])
def base(request):
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("plan", ["swap", "host", "file"])
def test_every_strategy_patches_the_same_bits_and_restores_them(
    base, dtype, plan, tmp_path, monkeypatch
):
    c, lora = _model(base, dtype)
    snap = snapshot(c)
    with apply_loras(c.as_mapping(), [(lora, 0.8)], strategy="swap"):
        swapped = snapshot(c)
    assert_bit_exact(c, snap)

    originals = FileOriginals(c, tmp_path) if plan == "file" else None
    if plan == "file":
        _only_the_file_fits(monkeypatch, c)
    strategy = "swap" if plan == "swap" else "inplace"
    addresses = {k: p.data_ptr() for k, p in c.unet.named_parameters()}
    with apply_loras(c.as_mapping(), [(lora, 0.8)], strategy=strategy, originals=originals) as r:
        assert r.strategy == plan
        assert_bit_exact(c, swapped)
        moved = [k for k, p in c.unet.named_parameters() if p.data_ptr() != addresses[k]]
        assert bool(moved) == (plan == "swap")  # in place: every storage address kept
    assert_bit_exact(c, snap)

    patched = apply_loras(c.as_mapping(), [(lora, 0.8)], strategy=strategy, originals=originals)
    with pytest.raises(RuntimeError, match="boom"), patched:
        raise RuntimeError("boom")
    assert_bit_exact(c, snap)


@pytest.mark.parametrize("plan", ["host", "file"])
def test_a_failure_midway_through_an_in_place_patch_restores_what_was_written(
    plan, tmp_path, monkeypatch
):
    c, lora = _model("sd1", torch.float16)
    snap = snapshot(c)
    originals = FileOriginals(c, tmp_path) if plan == "file" else None
    if plan == "file":
        _only_the_file_fits(monkeypatch, c)
    layers = list(lora.layers.values())
    victim = layers[len(layers) // 2]
    calls = {"n": 0}
    real = type(victim).add_weight

    def failing(self, acc, w, weight):
        if self is victim:
            raise RuntimeError("disk on fire")
        calls["n"] += 1
        return real(self, acc, w, weight)

    monkeypatch.setattr(type(victim), "add_weight", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        LoRAPatcher(c.as_mapping(), strategy="inplace", originals=originals).set([(lora, 1.0)])
    assert calls["n"] > 0  # some weights were written before the failure
    assert_bit_exact(c, snap)


def test_a_model_file_replaced_while_patched_is_detected(tmp_path, monkeypatch):
    c, lora = _model("sd1", torch.float32)
    originals = FileOriginals(c, tmp_path)
    _only_the_file_fits(monkeypatch, c)
    patcher = LoRAPatcher(c.as_mapping(), strategy="inplace", originals=originals)
    assert patcher.set([(lora, 1.0)]).strategy == "file"
    path = originals.files["unet"]
    state = {k: v.detach().clone() + 1 for k, v in c.unet.named_parameters()}
    save_file(state, str(path))  # a new file under the same name
    with pytest.raises(LoRARestoreError, match=r"changed on disk.*loaded again"):
        patcher.restore()


def test_changed_bits_behind_an_unchanged_identity_are_detected(tmp_path, monkeypatch):
    """Even a file rewritten in place with its size and mtime put back cannot give wrong
    weights: each read-back weight must match the digest taken before it was patched."""
    c, lora = _model("sd1", torch.float32)
    originals = FileOriginals(c, tmp_path)
    _only_the_file_fits(monkeypatch, c)
    patcher = LoRAPatcher(c.as_mapping(), strategy="inplace", originals=originals)
    patcher.set([(lora, 1.0)])
    path = originals.files["unet"]
    st = path.stat()
    with safe_open(str(path), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    key = next(k for k in state if k.endswith("attn2.to_k.weight"))
    state[key][0, 0] += 1.0
    save_file(state, str(path))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    originals.identity["unet"] = originals._stat(path)  # the inode may differ: accept it
    with pytest.raises(LoRARestoreError, match="reads back different bits"):
        patcher.restore()


def test_a_stack_that_fits_no_strategy_names_the_setting(tmp_path, monkeypatch):
    c, lora = _model("sd1", torch.float32)
    snap = snapshot(c)
    monkeypatch.setattr(backups_module, "free_bytes", lambda dev: 1024)
    with pytest.raises(LoRAError, match=r"GiB of cpu memory.*precision"):
        LoRAPatcher(c.as_mapping(), strategy="inplace").set([(lora, 1.0)])
    _only_the_file_fits(monkeypatch, c)
    with pytest.raises(LoRAError, match=r'strategy = "inplace"'):
        LoRAPatcher(c.as_mapping(), strategy="swap", originals=FileOriginals(c, tmp_path)).set(
            [(lora, 1.0)]
        )
    assert_bit_exact(c, snap)
    with pytest.raises(LoRAError, match="unknown patch strategy"):
        LoRAPatcher(c.as_mapping(), strategy="sideways").set([(lora, 1.0)])


def test_auto_swaps_when_it_fits_and_goes_in_place_when_it_does_not(tmp_path, monkeypatch):
    c, lora = _model("sd1", torch.float16)
    originals = FileOriginals(c, tmp_path)
    assert LoRAPatcher(c.as_mapping(), originals=originals).set([(lora, 1.0)]).strategy == "swap"
    c, lora = _model("sd1", torch.float16)
    originals = FileOriginals(c, tmp_path)
    _only_the_file_fits(monkeypatch, c)
    patcher = LoRAPatcher(c.as_mapping(), originals=originals)
    assert patcher.set([(lora, 1.0)]).strategy == "file"
    patcher.restore()


def test_inplace_on_the_cpu_reads_the_file_before_it_copies(tmp_path, monkeypatch):
    """On the CPU host copies cost what swapping costs, so `inplace` takes the file even with
    memory to spare (host copies only for a model loaded from no file). Fails with the GPU's
    order (host copies first) on the CPU."""
    c, lora = _model("sd1", torch.float16)
    originals = FileOriginals(c, tmp_path)
    patcher = LoRAPatcher(c.as_mapping(), strategy="inplace", originals=originals)
    assert patcher.set([(lora, 1.0)]).strategy == "file"
    patcher.restore()
    assert LoRAPatcher(c.as_mapping(), strategy="inplace").set([(lora, 1.0)]).strategy == "host"


def test_a_capped_gpu_offers_what_is_left_of_its_cap(monkeypatch):
    """An 80 GiB GPU with 50 GiB free to the driver and 1 GiB unused in PyTorch's cache: all
    51 GiB can be taken, unless the process is capped at 12 GiB with 5 allocated: then 7."""
    from types import SimpleNamespace

    from loraworks.lora import staging

    gib = 2**30
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "mem_get_info", lambda dev: (50 * gib, 80 * gib))
    monkeypatch.setattr(cuda, "memory_reserved", lambda dev: 6 * gib)
    monkeypatch.setattr(cuda, "memory_allocated", lambda dev: 5 * gib)
    props = SimpleNamespace(total_memory=80 * gib)
    monkeypatch.setattr(cuda, "get_device_properties", lambda dev: props)
    monkeypatch.setattr(cuda, "get_per_process_memory_fraction", lambda dev: 1.0)
    assert staging.free_bytes(torch.device("cuda")) == 51 * gib
    monkeypatch.setattr(cuda, "get_per_process_memory_fraction", lambda dev: 12 / 80)
    assert staging.free_bytes(torch.device("cuda")) == 7 * gib
