"""LoRA tools on SD1.5- and SDXL-size inputs (docs/benchmarks.md, "LoRA tools").

    .venv/bin/python bench/lora_tools.py --base sd1 --layers 24
    .venv/bin/python bench/lora_tools.py --base sdxl --layers 24

The published architectures are built on the meta device (shapes only, no memory), then:

* **resize**: a random kohya LoRA of `--rank` on every attention linear of the UNet and text
  encoders, resized to `--to` with `loraworks.lora.tools.resize` (exact SVD through the
  factors), against the same SVD of each materialised ΔW (`torch.linalg.svd`, what kohya's
  `resize_lora.py` does) on `--layers` of them: time, and the error each leaves.
* **extract**: for `--layers` of the largest modules, a weight difference = a random rank-`--rank`
  ΔW plus noise of 1e-3 of its size (a fine-tune is not exactly low rank), cut to `--to`: full
  SVD vs `torch.svd_lowrank` (q = to + 8, 2 power iterations): time and ‖D − D_k‖_F relative to
  the optimum (Eckart–Young); lycoris-lora's `extract_linear` on the same matrices where
  lycoris is importable (it takes a full SVD, `full_matrices=True`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraworks.lora import load_lora
from loraworks.lora.tools import RankRule, resize
from loraworks.lora.tools.delta import Delta, truncate
from tests.fixtures.models import build_components
from tests.lora.util import kohya_lora


def meta_components(base: str):
    with torch.device("meta"):
        return build_components(base, "full")  # type: ignore[arg-type]


def random_lora(components, rank: int) -> dict[str, torch.Tensor]:
    """kohya_lora's layout (it reads only the meta modules' shapes; tensors are on the CPU)."""
    return kohya_lora(components, rank=rank, alpha=rank / 2, scale=0.05)


def bench_resize(base: str, rank: int, to: int, layers: int) -> None:
    sd = random_lora(meta_components(base), rank)
    lora = load_lora((sd, {}), base=base)
    resize(load_lora((dict(list(sd.items())[:3]), {}), base=base), RankRule(rank=to))  # warm-up
    t0 = time.perf_counter()
    result = resize(lora, RankRule(rank=to))
    ours = time.perf_counter() - t0
    print(f"{base} resize {len(lora.layers)} layers r{rank}->r{to}: factored SVD {ours:.2f} s")
    items = list(lora.layers.items())
    sample = items[:: max(1, len(items) // layers)]  # spread over the model's widths
    t0 = time.perf_counter()
    worst = 0.0
    for target, layer in sample:
        d = layer.scale * layer.up.float().flatten(1) @ layer.down.float().flatten(1)
        s = torch.linalg.svd(d, full_matrices=False).S  # U and V too, as kohya computes them
        ours_err = next(r.error for r in result.layers if r.target == target)
        dense_err = float(s[to:].double().pow(2).sum().sqrt())
        worst = max(worst, abs(ours_err - dense_err) / max(dense_err, 1e-30))
    dense = (time.perf_counter() - t0) / len(sample) * len(lora.layers)
    print(
        f"{base} resize: dense SVD of each ΔW ≈ {dense:.2f} s for all layers "
        f"(from {len(sample)}); max relative difference of the errors {worst:.1e}"
    )


def bench_extract(base: str, rank: int, to: int, layers: int) -> None:
    comps = meta_components(base)
    mods = [
        (f"{c}.{n}", m)
        for c, comp in comps.as_mapping().items()
        for n, m in comp.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    mods.sort(key=lambda x: -math.prod(x[1].weight.shape))
    g = torch.Generator().manual_seed(0)
    try:
        from lycoris.utils import extract_linear  # type: ignore[import-not-found]
    except ImportError:
        extract_linear = None
        print("lycoris-lora is not importable here: its extractor is not compared")
    times = {"full": 0.0, "lowrank": 0.0, "lycoris": 0.0}
    excess = {"full": 0.0, "lowrank": 0.0, "lycoris": 0.0}
    for _, m in mods[:layers]:
        shape = m.weight.shape
        o, i = shape[0], math.prod(shape[1:])
        d = torch.randn(o, rank, generator=g) @ torch.randn(rank, i, generator=g) * 0.01
        d += torch.randn(o, i, generator=g) * (1e-3 * float(d.norm()) / math.sqrt(o * i))
        best = float(torch.linalg.svdvals(d)[to:].double().pow(2).sum().sqrt())
        for method in ("full", "lowrank"):
            t0 = time.perf_counter()
            _, cut = truncate(Delta((o, i), dense=d), RankRule(rank=to), 1.0, torch.float32, method)
            times[method] += time.perf_counter() - t0
            excess[method] = max(excess[method], cut.error / best - 1)
        if extract_linear is not None:
            t0 = time.perf_counter()
            parts, how = extract_linear(d, mode="fixed", mode_param=to)
            times["lycoris"] += time.perf_counter() - t0
            error = float(parts[2].norm()) if how == "low rank" else best  # parts[2]: D − D_k
            excess["lycoris"] = max(excess["lycoris"], error / best - 1)
    n = min(layers, len(mods))
    for method, t in times.items():
        if method == "lycoris" and extract_linear is None:
            continue
        print(
            f"{base} extract, {n} largest modules, rank {to}: {method:8s} {t:.2f} s, "
            f"error up to {excess[method]:.1e} above the optimum"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", choices=("sd1", "sdxl"), default="sd1")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--to", type=int, default=8)
    p.add_argument("--layers", type=int, default=24)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_resize(a.base, a.rank, a.to, a.layers)
    bench_extract(a.base, a.rank, a.to, a.layers)


if __name__ == "__main__":
    main()
