"""Resource limits: a 10 GB safetensors header claim and LoRAs whose patch would not fit in
memory are refused before anything that size is allocated."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import save_file

from loraworks.lora import LoRAError, LoRAShapeError, apply_loras, load_lora
from loraworks.models import ModelError
from tests.reliability.crash import start, wait_for_line

MB = 2**20
TEN_GB = 10 * 2**30


def _peaks(call: Callable[[], object]) -> tuple[int, int]:
    """(Python heap peak, resident-set growth) in bytes while `call` runs (it must raise)."""
    rss = psutil.Process().memory_info().rss
    tracemalloc.start()
    try:
        with pytest.raises((LoRAError, ModelError)) as info:
            call()
        assert str(info.value).strip()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, psutil.Process().memory_info().rss - rss


def _ten_gb_claim(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", TEN_GB) + b'{"lora_unet_x.alpha": ' + b" " * 4096)
    return path


def test_ten_gb_header_claim_is_refused_before_reading(tmp_path, manager, client):
    path = _ten_gb_claim(tmp_path / "claim.safetensors")
    for call in (lambda: load_lora(path), lambda: manager.install(path)):
        heap, rss = _peaks(call)
        assert heap < 4 * MB and rss < 200 * MB, (heap, rss)
    response = client.post("/api/models/install", json={"source": str(path)})
    assert response.status_code == 400 and "header" in response.json()["error"]


def _save(tmp_path: Path, name: str, leaves: dict[str, torch.Tensor]) -> Path:
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    path = tmp_path / f"{name}.safetensors"
    save_file({f"{key}.{leaf}": t for leaf, t in leaves.items()}, str(path))
    return path


BLOW_UPS = {
    # kron(1000x1000, 1000x1000) = 10^12 elements (4 TB in fp32) from an 8 MB file
    "lokr": {"lokr_w1": torch.zeros(1000, 1000), "lokr_w2": torch.zeros(1000, 1000)},
    # (200000 x 1) @ (1 x 200000) = 4·10^10 elements (160 GB) from a 1.6 MB file
    "loha": {
        "hada_w1_a": torch.zeros(200_000, 1),
        "hada_w1_b": torch.zeros(1, 200_000),
        "hada_w2_a": torch.zeros(200_000, 1),
        "hada_w2_b": torch.zeros(1, 200_000),
    },
    "lora": {
        "lora_down.weight": torch.zeros(1, 200_000),
        "lora_up.weight": torch.zeros(200_000, 1),
    },
}


@pytest.mark.parametrize("kind", sorted(BLOW_UPS))
def test_small_file_with_a_huge_delta_is_refused_before_computing_it(kind, tmp_path, fp16_model):
    path = _save(tmp_path, kind, BLOW_UPS[kind])
    rss = psutil.Process().memory_info().rss
    with pytest.raises(LoRAError, match="fits no"):  # the base probe already refuses it
        load_lora(path)
    lora = load_lora(path, base="sd1")  # and when the caller forces the base, apply does
    with (
        pytest.raises(LoRAShapeError, match="does not fit"),
        apply_loras(fp16_model.components, [(lora, 1.0)]),
    ):
        pass
    assert psutil.Process().memory_info().rss - rss < 500 * MB
    fp16_model.assert_untouched(kind)


_HUGE_PATCH = """
import resource, sys, torch
from torch import nn
from loraworks.lora import LoRAError, apply_loras, load_lora
n = 65536
weight = torch.from_file(sys.argv[1], shared=True, size=n * n, dtype=torch.float16).view(n, n)
unet = nn.Module()
unet.proj = nn.Linear(1, 1, bias=False)
unet.proj.weight = nn.Parameter(weight, requires_grad=False)
sd = {"lora_unet_proj.lora_down.weight": torch.full((1, n), 1e-3),
      "lora_unet_proj.lora_up.weight": torch.full((n, 1), 1e-3)}
lora = load_lora((sd, {}), base="sd1")
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, resource.RLIM_INFINITY))
print("ready", flush=True)
ptr = unet.proj.weight.data_ptr()
try:
    with apply_loras({"unet": unet}, [(lora, 1.0)]):
        print("patched", flush=True)
except LoRAError as exc:
    print("refused", type(exc).__name__, exc, flush=True)
except BaseException as exc:
    print("crash", type(exc).__name__, str(exc)[:200], flush=True)
print("untouched" if unet.proj.weight.data_ptr() == ptr else "swapped", flush=True)
"""


@pytest.mark.timeout(180)
def test_patch_larger_than_memory_is_refused_with_a_lora_error(tmp_path):
    """An 8 GB fp16 weight (a sparse, memory-mapped file) needs a 16 GB fp32 buffer and an 8 GB
    result to patch: more than this machine has. RLIMIT_AS makes the allocation fail at once
    instead of swapping, so the test is safe; the engine should refuse before trying."""
    weight = tmp_path / "weight.bin"
    with weight.open("wb") as f:
        f.truncate(65536 * 65536 * 2)
    proc = start(_HUGE_PATCH, str(weight))
    try:
        wait_for_line(proc, "ready")
        proc.wait(timeout=150)
        # not communicate(): with a timeout it reads the pipe's fd directly and would miss lines
        # that readline() above already pulled into the text buffer
        out = proc.stdout.read()
    finally:
        proc.kill()
    assert "untouched" in out, out
    assert out.startswith("refused"), out
