"""Switching between two LoRA sets on a loaded SD1.5-size model vs one UNet step at 512 px.

    .venv/bin/python bench/lora_switch.py --device cpu

What a generation does when its LoRA stack differs from the previous one: `LoRAPatcher.set`
(restore the old stack, apply the new) on the model kept loaded by the cache; the main model
is never reloaded. Each set is two random kohya LoRAs (rank 16, UNet attention + text encoder
q/v projections) on the full SD1.5 UNet + CLIP-L with random weights. The same stack again is a
no-op (also timed). One UNet step = one batch-1 forward at 512 px (64x64 latents), as run at
CFG <= 1; at CFG > 1 a step is a batch-2 forward, about twice that.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraworks.lora import LoRAPatcher, load_lora
from tests.fixtures.models import build_components
from tests.generation.loras import write_lora


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--unet-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    model = build_components("sd1", "full")
    with tempfile.TemporaryDirectory() as tmp:
        files = [
            write_lora(model, Path(tmp) / f"{i}.safetensors", seed=i, rank=16) for i in range(4)
        ]
        loras = [load_lora(f).to(device, dtype) for f in files]
    model.unet.to(device, dtype)
    model.text_encoder.to(device, dtype)
    patcher = LoRAPatcher(model.as_mapping())
    set_a = [(loras[0], 0.8), (loras[1], 0.6)]
    set_b = [(loras[2], 0.7), (loras[3], {"unet": 1.0, "text_encoder": 0.5})]

    first_apply = _timed(lambda: patcher.set(set_a), device)
    switches = [
        _timed(lambda s=(set_b if i % 2 == 0 else set_a): patcher.set(s), device)
        for i in range(args.switches)
    ]
    same = _timed(lambda: patcher.set(patcher.current), device)
    restore = _timed(patcher.restore, device)

    latents = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
    context = torch.randn(1, 77, 768, device=device, dtype=dtype)
    with torch.no_grad():
        model.unet(latents, 500, encoder_hidden_states=context)  # warm-up
        steps = [
            _timed(lambda: model.unet(latents, 500, encoder_hidden_states=context), device)
            for _ in range(args.unet_steps)
        ]

    switch = statistics.median(switches)
    step = statistics.median(steps)
    print(f"SD1.5 UNet + CLIP-L, {device.type} {dtype}, torch threads {torch.get_num_threads()}")
    print(f"first apply of set A (2 LoRAs): {first_apply:.3f} s")
    print(f"switch A<->B, median of {args.switches}: {switch:.3f} s (min {min(switches):.3f})")
    print(f"same set again (no-op): {same * 1000:.2f} ms; restore: {restore:.3f} s")
    print(f"one UNet step, batch 1, 512 px, median of {args.unet_steps}: {step:.2f} s")
    print(f"switch / UNet step: {switch / step:.3f}")


if __name__ == "__main__":
    main()
