"""Procedural training data for the demo model: one coloured shape on a plain background.

Everything is drawn from a seed, so the shipped weights can be retrained bit for bit and the
judge can be tested on pictures whose truth is known. Shapes are drawn 4x larger and reduced
with a box filter, which gives the soft edges a VAE learns easily.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
_SUPERSAMPLE = 4
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 210, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
BASE_SHAPES = ("circle", "square", "triangle")
STAR = "star"
TRIGGER = "zkstar"
"""The caption word for a star: a word the base model never sees drawn, so only the LoRA
teaches what it means."""
CAPTION_WORDS = ("a", "on", "background", *COLOURS, *BACKGROUNDS, *BASE_SHAPES, TRIGGER)


@dataclass(frozen=True)
class Label:
    """What one picture shows; also what the judge reads back."""

    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        word = TRIGGER if self.shape == STAR else self.shape
        return f"a {self.colour} {word} on a {self.background} background"


@dataclass
class ShapeSet:
    """Rendered pictures (N, 64, 64, 3) uint8 and their labels, in the same order."""

    images: np.ndarray
    labels: list[Label]

    @property
    def captions(self) -> list[str]:
        return [label.caption for label in self.labels]


def all_labels(shapes: tuple[str, ...] = BASE_SHAPES) -> list[Label]:
    """Every colour × shape × background combination (24 for the base shapes)."""
    return [Label(c, s, b) for s, c, b in itertools.product(shapes, COLOURS, BACKGROUNDS)]


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon corners of `shape` (upright) centred at (cx, cy) with outer radius r."""
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        # centre of the bounding box at (cx, cy): the apex sits r above, the base 0.5 r below
        dy = 0.25 * r
        angles = (-90, 30, 150)
    elif shape == STAR:
        dy = 0.0
        angles = tuple(-90 + 36 * i for i in range(10))
    else:
        raise ValueError(f"no polygon for {shape!r}")
    points = []
    for i, a in enumerate(angles):
        radius = r * 0.45 if shape == STAR and i % 2 else r
        t = math.radians(a)
        points.append((cx + radius * math.cos(t), cy + dy + radius * math.sin(t)))
    return points


def render(label: Label, rng: np.random.Generator) -> np.ndarray:
    """Draw `label` at a random size and position (fully inside, off the border)."""
    r = rng.uniform(11.0, 22.0)
    margin = r + 3.0
    cx, cy = rng.uniform(margin, SIZE - margin, size=2)
    s = _SUPERSAMPLE
    canvas = Image.new("RGB", (SIZE * s, SIZE * s), BACKGROUNDS[label.background])
    draw = ImageDraw.Draw(canvas)
    fill = COLOURS[label.colour]
    if label.shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=fill)
    else:
        draw.polygon([(x * s, y * s) for x, y in _outline(label.shape, cx, cy, r)], fill=fill)
    return np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX))


def make_set(n: int, seed: int, shapes: tuple[str, ...] = BASE_SHAPES) -> ShapeSet:
    """`n` pictures cycling through every label of `shapes` in a seeded random order."""
    rng = np.random.default_rng(seed)
    combos = all_labels(shapes)
    labels = [combos[i] for i in rng.permutation(np.arange(n) % len(combos))]
    images = np.stack([render(label, rng) for label in labels])
    return ShapeSet(images=images, labels=labels)


def to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float32 torch (N, 3, H, W) in [-1, 1], as SD's VAE expects."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
