"""Judge what a demo model draws: the fraction of prompts whose colour, shape and background
all come out right. Used while training (progress checks) and by `bench/quality.py`."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, LCMScheduler, StableDiffusionPipeline

from loraworks.demo.data import BASE_SHAPES, STAR, Label, all_labels
from loraworks.demo.judge import judge


@dataclass
class Score:
    """Judge results over `n` pictures: all right, and each attribute alone."""

    n: int
    right: float
    shape_and_colour: float
    colour: float
    shape: float
    background: float

    def __str__(self) -> str:
        return (
            f"right {self.right:.1%} (colour {self.colour:.1%}, shape {self.shape:.1%}, "
            f"background {self.background:.1%}, n={self.n})"
        )


def score(expected: list[Label], images: list[np.ndarray]) -> Score:
    got = [judge(im) for im in images]
    pairs = list(zip(expected, got, strict=True))

    def frac(ok) -> float:
        return float(np.mean([ok(e, g) for e, g in pairs]))

    return Score(
        n=len(pairs),
        right=frac(lambda e, g: e == g),
        shape_and_colour=frac(lambda e, g: (e.shape, e.colour) == (g.shape, g.colour)),
        colour=frac(lambda e, g: e.colour == g.colour),
        shape=frac(lambda e, g: e.shape == g.shape),
        background=frac(lambda e, g: e.background == g.background),
    )


def load_pipeline(folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def use_scheduler(pipe: StableDiffusionPipeline, name: str) -> None:
    """`euler` (the usual SD sampler) or `lcm` (what LCM-LoRAs are made for)."""
    cls = {"euler": EulerDiscreteScheduler, "lcm": LCMScheduler}[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def draw(
    pipe: StableDiffusionPipeline,
    labels: list[Label],
    seeds: list[int],
    steps: int,
    cfg: float,
    batch: int = 24,
) -> tuple[list[Label], list[np.ndarray]]:
    """Every label × every seed; returns the expected labels and the pictures, in order."""
    jobs = [(label, seed) for seed in seeds for label in labels]
    images: list[np.ndarray] = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        out = pipe(
            prompt=[label.caption for label, _ in chunk],
            num_inference_steps=steps,
            guidance_scale=cfg,
            height=64,
            width=64,
            generator=[torch.Generator().manual_seed(seed) for _, seed in chunk],
            output_type="np",
        ).images
        images += [(im * 255).round().astype(np.uint8) for im in out]
    return [label for label, _ in jobs], images


@torch.no_grad()
def reconstruction_score(vae, n: int = 240, seed: int = 99) -> Score:
    """Judge the VAE alone: encode and decode unseen dataset pictures."""
    from loraworks.demo.data import make_set, to_tensor

    shapes = make_set(n, seed)
    out = vae.decode(vae.encode(to_tensor(shapes.images)).latent_dist.mean).sample
    pictures = ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return score(shapes.labels, list(pictures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--scheduler", default="euler")
    parser.add_argument("--stars", action="store_true", help="judge star prompts instead")
    parser.add_argument("--vae-only", action="store_true", help="judge VAE reconstructions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model)
    if args.vae_only:
        print(f"{args.model} VAE reconstructions: {reconstruction_score(pipe.vae)}", flush=True)
        return
    use_scheduler(pipe, args.scheduler)
    labels = all_labels((STAR,) if args.stars else BASE_SHAPES)
    t0 = time.perf_counter()
    expected, images = draw(pipe, labels, list(range(args.seeds)), args.steps, args.cfg)
    step = (
        (args.model / "step.txt").read_text().strip() if (args.model / "step.txt").exists() else "?"
    )
    print(
        f"{time.strftime('%H:%M:%S')} {args.model} step {step} {args.scheduler} {args.steps} steps "
        f"cfg {args.cfg}: {score(expected, images)} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
