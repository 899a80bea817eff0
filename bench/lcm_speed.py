"""LCM fast path vs the usual 25-step Euler at CFG 7.5, and loraworks vs diffusers'
`StableDiffusionPipeline` with the same settings, on the same SD1.5-architecture model.

    .venv/bin/python bench/lcm_speed.py --device cpu --size full --px 256
    .venv/bin/python bench/lcm_speed.py --device cuda --size full          # 512 px

The model has random weights (nothing downloads weights); speed does not depend on them. The
LCM-LoRA is a random rank-64 file with the published LCM-LoRA layout (whole UNet, no text
encoder), patched once before timing as loraworks' model cache keeps it (its patch time is
printed separately). End to end = prompt encoding + denoise + VAE decode to a PIL image.
All four runs are interleaved in each round, in reversed order every other round, so
machine load and clock ramps hit them alike; CPU time is printed next to wall time because it
is less sensitive to other processes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraworks.generation.render import RenderSettings, render
from loraworks.generation.schedulers import build_scheduler
from loraworks.lora import LoRAPatcher, load_lora
from tests.fixtures.models import build_pipeline
from tests.generation.loras import write_lora

PROMPT = "a lighthouse on a cliff at sunset, oil painting"


@dataclass
class Timing:
    wall: float  # seconds
    cpu: float  # CPU seconds of this process (all threads): less sensitive to machine load


def _timed(fn: Callable[[], object], device: torch.device) -> Timing:
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


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


def _median(times: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall for t in times), statistics.median(t.cpu for t in times))


@torch.no_grad()
def _breakdown(pipe, px: int, repeats: int, device: torch.device) -> None:
    """Where end-to-end time goes: one UNet call at batch 1 and 2, one VAE decode, one prompt
    encoding (interleaved). LCM = 4 UNet(b1) + decode; Euler CFG 7.5 = 25 UNet(b2) + decode."""
    dtype = pipe.unet.dtype
    latents = torch.randn(1, 4, px // 8, px // 8, device=device, dtype=dtype)
    context = torch.randn(1, 77, 768, device=device, dtype=dtype)
    ids = pipe.tokenizer(PROMPT, padding="max_length", return_tensors="pt").input_ids.to(device)
    parts = {
        "UNet batch 1": lambda: pipe.unet(latents, 500, encoder_hidden_states=context),
        "UNet batch 2": lambda: pipe.unet(
            latents.repeat(2, 1, 1, 1), 500, encoder_hidden_states=context.repeat(2, 1, 1)
        ),
        "VAE decode": lambda: pipe.vae.decode(latents),
        "prompt encode": lambda: pipe.text_encoder(ids),
    }
    times: dict[str, list[Timing]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, fn in parts.items():
            times[name].append(_timed(fn, device))
    med = {name: _median(t) for name, t in times.items()}
    for name, t in med.items():
        print(f"{name}: {t.wall:.2f} s wall ({t.cpu:.1f} CPU s)")
    u1, u2, d = (med[k].cpu for k in ("UNet batch 1", "UNet batch 2", "VAE decode"))
    print(
        f"UNet-only LCM speed-up (25 x b2 / 4 x b1): {25 * u2 / (4 * u1):.1f}x; "
        f"VAE decode = {d / u1:.1f} UNet(b1) calls (CPU time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--px", type=int, default=None, help="image side (default 512; tiny 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--breakdown", action="store_true", help="only time UNet / VAE / encoder calls"
    )
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

    if args.breakdown:
        _breakdown(pipe, px, args.repeats, device)
        return
    patch = _timed(lambda: patcher.set([(lcm, 1.0)]), device)
    # The LCM-LoRA stays applied for the Euler runs too: a patched weight is as dense as the
    # original, so their speed is the same, and all four runs can be interleaved per round
    # (machine load then hits every run alike).
    runs = {
        ("lcm", "loraworks"): _ours(pipe, lcm_settings),
        ("lcm", "diffusers"): _diffusers(pipe, lcm_settings),
        ("euler", "loraworks"): _ours(pipe, euler_settings),
        ("euler", "diffusers"): _diffusers(pipe, euler_settings),
    }
    # untimed warm-up (allocator, kernels); on a GPU every run, which also ramps its clocks
    for run in runs.values() if device.type == "cuda" else [runs["lcm", "loraworks"]]:
        run()
    times: dict[tuple[str, str], list[Timing]] = {key: [] for key in runs}
    order = list(runs)
    for i in range(args.repeats):  # every other round reversed: no run always goes first
        for key in order if i % 2 == 0 else order[::-1]:
            times[key].append(_timed(runs[key], device))
    med = {key: _median(t) for key, t in times.items()}

    print(
        f"SD1.5-architecture ({args.size}), {px}x{px}, {device.type} {dtype}, torch threads "
        f"{torch.get_num_threads()}; median of {args.repeats} interleaved rounds"
    )
    print(f"LCM-LoRA patch (once, cached afterwards): {patch.wall:.2f} s")
    print("| run | loraworks wall s (CPU s) | diffusers wall s (CPU s) | loraworks / diffusers |")
    print("|---|---|---|---|")
    for mode, name in (("lcm", "LCM-LoRA, LCM 4 steps, CFG 1"), ("euler", "Euler 25, CFG 7.5")):
        ours, theirs = med[mode, "loraworks"], med[mode, "diffusers"]
        print(
            f"| {name} | {ours.wall:.2f} ({ours.cpu:.1f}) | {theirs.wall:.2f} ({theirs.cpu:.1f}) "
            f"| {ours.wall / theirs.wall:.2f} |"
        )
    for who in ("loraworks", "diffusers"):
        euler, lcm_run = med["euler", who], med["lcm", who]
        print(
            f"LCM speed-up, {who}: {euler.wall / lcm_run.wall:.1f}x wall, "
            f"{euler.cpu / lcm_run.cpu:.1f}x CPU time"
        )


if __name__ == "__main__":
    main()
