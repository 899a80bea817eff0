"""LCM fast path vs the usual 25-step Euler at CFG 7.5, and loraworks vs diffusers'
`StableDiffusionPipeline` with the same settings, on the same SD1.5-architecture model.

    .venv/bin/python bench/lcm_speed.py --device cpu --size full --px 256
    .venv/bin/python bench/lcm_speed.py --device cuda --size full          # 512 px

The model has random weights (nothing downloads weights); speed does not depend on them. The
LCM-LoRA is a random rank-64 file with the published LCM-LoRA layout (whole UNet, no text
encoder), patched once before timing as loraworks' model cache keeps it (its patch time is
printed separately). End to end = prompt encoding + denoise + VAE decode to a PIL image.
Runs of loraworks and diffusers are interleaved so machine load hits both alike.
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

from loraworks.generation.render import RenderSettings, render
from loraworks.generation.schedulers import build_scheduler
from loraworks.lora import LoRAPatcher, load_lora
from tests.fixtures.models import build_pipeline
from tests.generation.loras import write_lora

PROMPT = "a lighthouse on a cliff at sunset, oil painting"


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _ours(pipe, settings: RenderSettings) -> Callable[[], object]:
    return lambda: render(pipe, settings)


def _diffusers(pipe, s: RenderSettings) -> Callable[[], object]:
    def run() -> object:
        original = pipe.scheduler
        pipe.scheduler = build_scheduler(s.scheduler, original.config)
        try:
            return pipe(
                s.prompt,
                num_inference_steps=s.steps,
                guidance_scale=s.cfg,
                height=s.height,
                width=s.width,
                generator=torch.Generator().manual_seed(s.seed),
            ).images[0]
        finally:
            pipe.scheduler = original

    return run


def _pair(
    pipe, s: RenderSettings, repeats: int, device: torch.device, warm_up: bool
) -> tuple[float, float]:
    """Median seconds (loraworks, diffusers), interleaved, optionally after an untimed run each."""
    ours, theirs = _ours(pipe, s), _diffusers(pipe, s)
    if warm_up:
        ours(), theirs()
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(repeats):
        times["ours"].append(_timed(ours, device))
        times["diffusers"].append(_timed(theirs, device))
    return statistics.median(times["ours"]), statistics.median(times["diffusers"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--px", type=int, default=None, help="image side (default 512; tiny 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--euler-repeats", type=int, default=None, help="default: --repeats")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    px = args.px or (64 if args.size == "tiny" else 512)

    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipeline("sd1", Path(tmp), size=args.size)
        lcm_file = write_lora(pipe, Path(tmp) / "lcm.safetensors", seed=1, lcm=True, rank=64)
        pipe.to(device, dtype)
        lcm = load_lora(lcm_file).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    patcher = LoRAPatcher(pipe)

    base = dict(prompt=PROMPT, negative_prompt=None, width=px, height=px, seed=0)
    lcm_settings = RenderSettings(**base, steps=4, cfg=1.0, scheduler="lcm")
    euler_settings = RenderSettings(**base, steps=25, cfg=7.5, scheduler="euler")

    patch_s = _timed(lambda: patcher.set([(lcm, 1.0)]), device)
    lcm_ours, lcm_diffusers = _pair(pipe, lcm_settings, args.repeats, device, warm_up=True)
    patcher.restore()
    euler_ours, euler_diffusers = _pair(
        pipe, euler_settings, args.euler_repeats or args.repeats, device, warm_up=False
    )
    speedup_ours = euler_ours / lcm_ours
    speedup_diffusers = euler_diffusers / lcm_diffusers

    euler_repeats = args.euler_repeats or args.repeats
    print(
        f"SD1.5-architecture ({args.size}), {px}x{px}, {device.type} {dtype}, torch threads "
        f"{torch.get_num_threads()}; median of {args.repeats} (Euler: {euler_repeats}) runs"
    )
    print(f"LCM-LoRA patch (once, cached afterwards): {patch_s:.2f} s")
    print("| run | loraworks s | diffusers s | loraworks / diffusers |")
    print("|---|---|---|---|")
    for name, ours, theirs in (
        ("LCM-LoRA, LCM 4 steps, CFG 1", lcm_ours, lcm_diffusers),
        ("Euler 25 steps, CFG 7.5", euler_ours, euler_diffusers),
    ):
        print(f"| {name} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |")
    print(
        "LCM speed-up (Euler 25/CFG 7.5 time ÷ LCM 4/CFG 1 time): "
        f"loraworks {speedup_ours:.1f}x, diffusers {speedup_diffusers:.1f}x"
    )


if __name__ == "__main__":
    main()
