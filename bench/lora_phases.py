r"""Where one-shot load + apply + restore spends its time, phase by phase (not a test).

    .venv/bin/python bench/lora_phases.py --device cpu --size tiny
    python3 bench/lora_phases.py --device cuda            # full SD1.5, fp16

On the same files as `bench/lora_apply.py` (rank 16 / rank 64 on the 176 attention linears, a
LoCon on every layer): reading the safetensors file, converting its keys, building the typed
layers (with the NaN scan), moving them to the device, `LoRAPatcher.set`, `restore`. Medians
after two warm-up rounds, with the default intra-op thread count and with one thread (on a
many-core host, small per-tensor CPU ops pay OpenMP start-up; this shows how much).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from lora_apply import make_lora_file  # noqa: E402

from loraworks.lora import LoRAPatcher  # noqa: E402
from loraworks.lora.load import build, convert_keys, read_file  # noqa: E402
from tests.fixtures.models import build_pipeline  # noqa: E402

PHASES = ("read", "convert", "build", "to device", "set", "restore")
FILES = (("r16", "attention", 16), ("r64", "attention", 64), ("locon", "all", 16))


def phases(pipe, path: Path, device: str) -> dict[str, float]:
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    out: dict[str, float] = {}
    sync()
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        sync()
        now = time.perf_counter()
        out[name] = now - t
        t = now

    sd, metadata = read_file(path)
    lap("read")
    converted = convert_keys(sd, metadata, None)
    lap("convert")
    lora = build(converted, metadata, name=path.stem)
    lap("build")
    lora.to(device)
    lap("to device")
    patcher = LoRAPatcher(pipe)
    patcher.set([(lora, 1.0)])
    lap("set")
    patcher.restore()
    lap("restore")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size", choices=["full", "tiny"], default="full")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    tmp = Path(tempfile.mkdtemp(prefix="lora_phases_"))
    pipe = build_pipeline("sd1", tmp / "pipe", size=args.size)
    pipe.to(args.device, dtype)
    files = {}
    for label, kind, rank in (
        ("r16", "attention", 16),
        ("r64", "attention", 64),
        ("locon", "all", 16),
    ):
        files[label] = tmp / f"{label}.safetensors"
        make_lora_file(pipe, kind, rank, files[label])
    threads = torch.get_num_threads()
    print(f"SD1.5 ({args.size}), {args.device} {dtype}; milliseconds, medians of {args.repeats}")
    print("| file | threads | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 2) + "|")
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        for label, path in files.items():
            runs = [phases(pipe, path, args.device) for _ in range(args.repeats + 2)][2:]
            med = [1000 * statistics.median(r[k] for r in runs) for k in PHASES]
            print(f"| {label} | {n} | " + " | ".join(f"{v:.1f}" for v in med) + " |")
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
