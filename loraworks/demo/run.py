"""`loraworks demo`: install the bundled models the way a user would, draw a comparison grid,
and print each row's wall time and judge score.

The base model goes in through `ModelManager.install` (a diffusers folder), the concept LoRA
through the `autoimport/lora` drop folder and a rescan, the LCM-LoRA folder through
`install` again: the two install paths of the product, exercised on every demo run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from loraworks.demo.data import BASE_SHAPES, STAR, Label, all_labels
from loraworks.demo.evaluate import Score, score

WEIGHTS = Path(__file__).parent / "weights"
BASE_NAME, STAR_NAME, LCM_NAME = "demo-shapes", "demo-star", "demo-lcm"
LCM_WEIGHT = 0.6
"""LCM-LoRA weight of the demo rows: best of `bench/quality.py`'s sweep (0.2…1.0) with 0.35,
alone and stacked with demo-star at 1.0 (docs/benchmarks.md)."""
STAR_WEIGHT = 1.0
"""Concept-LoRA weight of the demo rows, alone and stacked on the LCM-LoRA: the sweep (0…1.2)
draws 95% stars at 1.0 and none at or below 0.45, the seed's weight for stacked LoRAs."""
FEW_STEPS = 2
"""Where the LCM-LoRA earns its place: at 4 steps the LCM scheduler alone nearly matches it on
this data, at 2 it falls behind by more than 10 points (bench/fewstep_sampling.py,
docs/benchmarks.md); the grid shows both beside the scheduler-alone rows."""


@dataclass(frozen=True)
class Row:
    """One row of the comparison: which LoRAs at what weight, how many steps, which prompts."""

    title: str
    steps: int
    cfg: float
    scheduler: str
    loras: tuple[tuple[str, float], ...] = ()
    stars: bool = False
    spacing: str | None = None
    eta: float | None = None


def rows(lcm_weight: float = LCM_WEIGHT, star_weight: float = STAR_WEIGHT) -> list[Row]:
    lcm = (LCM_NAME, lcm_weight)
    star = (STAR_NAME, star_weight)
    few = FEW_STEPS
    return [
        Row("base, 25 steps, CFG 5", 25, 5.0, "euler"),
        Row("base, 4 steps, CFG 5", 4, 5.0, "euler"),
        Row("LCM scheduler alone (no LoRA), 4 steps, CFG 1", 4, 1.0, "lcm"),
        Row("LCM-LoRA, 4 steps, CFG 1", 4, 1.0, "lcm", (lcm,)),
        Row(f"LCM scheduler alone (no LoRA), {few} steps, CFG 1", few, 1.0, "lcm"),
        Row(f"LCM-LoRA, {few} steps, CFG 1", few, 1.0, "lcm", (lcm,)),
        Row("base + demo-star, 25 steps, CFG 5", 25, 5.0, "euler", (star,), stars=True),
        Row("LCM-LoRA + demo-star, 4 steps, CFG 1", 4, 1.0, "lcm", (lcm, star), stars=True),
    ]


# rows() by what bench/quality.py compares
BASE_25, ALONE_4, LCM_4, ALONE_FEW, LCM_FEW, STAR_25, STACK_4 = 0, 2, 3, 4, 5, 6, 7


@dataclass
class RowResult:
    row: Row
    seconds: float
    score: Score
    images: list[Image.Image] = field(repr=False)


def install_demo(mm) -> None:
    """Install the three bundled models (no-ops when already installed: same content hash)."""
    mm.install(WEIGHTS / BASE_NAME, name=BASE_NAME)
    drop = mm.paths.autoimport_lora / f"{STAR_NAME}.safetensors"
    if not drop.exists():
        shutil.copyfile(WEIGHTS / f"{STAR_NAME}.safetensors", drop)
    mm.scan()
    mm.install(WEIGHTS / LCM_NAME, name=LCM_NAME)


def row_labels(row: Row) -> list[Label]:
    return all_labels((STAR,) if row.stars else BASE_SHAPES)


def run_row(
    mm, row: Row, labels: list[Label], seeds: list[int], on_image: Callable[[], None] | None = None
) -> RowResult:
    """Every label at every seed, through `loraworks.generation.generate`, judged."""
    from loraworks.generation import GenerateRequest, LoRASpec, generate

    images: list[Image.Image] = []
    expected: list[Label] = []
    seconds = 0.0  # in `generate` alone: what a user waits for, not the judging here
    for label in labels:
        request = GenerateRequest(
            model=BASE_NAME,
            prompt=label.caption,
            width=64,
            height=64,
            steps=row.steps,
            cfg=row.cfg,
            scheduler=row.scheduler,
            spacing=row.spacing,
            eta=row.eta,
            seed=seeds[0],
            batch_size=len(seeds),
            loras=[LoRASpec(name=n, weight=w) for n, w in row.loras],
        )
        t0 = time.perf_counter()
        result = generate(request, manager=mm)
        seconds += time.perf_counter() - t0
        for path in result.images:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
            expected.append(label)
            if on_image is not None:
                on_image()
    return RowResult(row, seconds, score(expected, [np.asarray(im) for im in images]), images)


def grid(results: list[RowResult], scale: int = 2) -> Image.Image:
    """One row of pictures per result, its title and numbers on the left."""
    side = 64 * scale
    label_w = 330
    cols = max(len(r.images) for r in results)
    out = Image.new("RGB", (label_w + cols * side, len(results) * side), "white")
    draw = ImageDraw.Draw(out)
    for y, r in enumerate(results):
        draw.text((6, y * side + 8), r.row.title, fill="black")
        per_image = r.seconds / max(1, r.score.n)
        draw.text((6, y * side + 28), f"{per_image:.2f} s/image", fill="black")
        draw.text((6, y * side + 48), f"judge: {r.score.right:.0%} right", fill="black")
        for x, im in enumerate(r.images):
            out.paste(
                im.resize((side, side), Image.Resampling.NEAREST), (label_w + x * side, y * side)
            )
    return out


def demo_labels(row: Row) -> list[Label]:
    """A spread of prompts for the grid: every star prompt, every third base prompt."""
    labels = row_labels(row)
    return labels if row.stars else labels[::3]


def run_demo(root: Path | None, echo: Callable[[str], None] = print, seed: int = 0) -> Path:
    from loraworks.generation.cache import compute_summary
    from loraworks.models import ModelManager

    mm = ModelManager.open(root)
    echo(f"models root: {mm.root}")
    echo(f"models run on {compute_summary(mm.config.compute)}")
    install_demo(mm)
    results = []
    for row in rows():
        r = run_row(mm, row, demo_labels(row), [seed])
        echo(
            f"{row.title:<46} {r.seconds:6.1f} s  "
            f"({r.seconds / r.score.n:.2f} s/image)  judge {r.score}"
        )
        results.append(r)
    path = mm.paths.outputs / "demo-grid.png"
    grid(results).save(path)
    echo(f"comparison grid: {path}")
    return path
