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

from loraworks.lora import LoRA, LoRAPatcher, load_lora
from tests.fixtures.models import Components, build_components
from tests.generation.loras import write_lora


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def sd15_with_loras(device: torch.device, count: int) -> tuple[Components, list[LoRA]]:
    """The full SD1.5 UNet + CLIP-L and `count` random kohya LoRAs (rank 16) on `device`
    (fp16 on CUDA, else fp32)."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = build_components("sd1", "full")
    with tempfile.TemporaryDirectory() as tmp:
        files = [
            write_lora(model, Path(tmp) / f"{i}.safetensors", seed=i, rank=16) for i in range(count)
        ]
        loras = [load_lora(f).to(device, dtype) for f in files]
    model.unet.to(device, dtype)
    model.text_encoder.to(device, dtype)
    return model, loras


def unet_steps(model: Components, device: torch.device, repeats: int) -> list[float]:
    """Seconds of `repeats` batch-1 UNet forwards at 512 px (64x64 latents), after a warm-up."""
    dtype = model.unet.dtype
    latents = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
    context = torch.randn(1, 77, 768, device=device, dtype=dtype)
    with torch.no_grad():
        model.unet(latents, 500, encoder_hidden_states=context)  # warm-up
        return [
            timed(lambda: model.unet(latents, 500, encoder_hidden_states=context), device)
            for _ in range(repeats)
        ]


def arguments(doc: str, **extra: int) -> argparse.Namespace:
    """--device, --threads, --unet-steps and the script's own counts (`extra`: name=default)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--unet-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    for name, default in extra.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    args = arguments(__doc__, switches=6)
    device = torch.device(args.device)
    model, loras = sd15_with_loras(device, 4)
    dtype = model.unet.dtype
    patcher = LoRAPatcher(model.as_mapping())
    set_a = [(loras[0], 0.8), (loras[1], 0.6)]
    set_b = [(loras[2], 0.7), (loras[3], {"unet": 1.0, "text_encoder": 0.5})]

    first_apply = timed(lambda: patcher.set(set_a), device)
    switches = [
        timed(lambda s=(set_b if i % 2 == 0 else set_a): patcher.set(s), device)
        for i in range(args.switches)
    ]
    same = timed(lambda: patcher.set(patcher.current), device)
    restore = timed(patcher.restore, device)

    steps = unet_steps(model, device, args.unet_steps)
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
