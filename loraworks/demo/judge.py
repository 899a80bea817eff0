"""Read colour, shape and background off a demo picture, so quality is measured, not eyeballed.

Analytic on purpose (no learned classifier to trust): the background is the median border
colour; the foreground is the largest connected blob of pixels far from it; the colour is the
palette entry nearest the blob's mean; the shape follows from the blob's geometry: how much of
its bounding box it fills (square ≈ 1, circle ≈ π/4, upright triangle ≈ ½) and how much of its
convex hull (a five-pointed star ≈ 0.56, the convex shapes ≈ 1).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from loraworks.demo.data import BACKGROUNDS, COLOURS, STAR, Label

NOTHING = "nothing"
"""Shape reported when no foreground blob is large enough to be a drawn shape."""
_FG_DISTANCE = 90.0
_MIN_PIXELS = 30


def judge(image: np.ndarray) -> Label:
    """The label a person would give an RGB uint8 (H, W, 3) picture (any PIL image works too)."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    border = np.concatenate(
        [
            rgb[:2].reshape(-1, 3),
            rgb[-2:].reshape(-1, 3),
            rgb[:, :2].reshape(-1, 3),
            rgb[:, -2:].reshape(-1, 3),
        ]
    )
    bg_rgb = np.median(border, axis=0)
    background = min(BACKGROUNDS, key=lambda k: np.linalg.norm(bg_rgb - BACKGROUNDS[k]))
    mask = _largest_blob(np.linalg.norm(rgb - bg_rgb, axis=-1) > _FG_DISTANCE)
    if mask.sum() < _MIN_PIXELS:
        return Label(colour=NOTHING, shape=NOTHING, background=background)
    mean = rgb[mask].mean(axis=0)
    colour = min(COLOURS, key=lambda k: np.linalg.norm(mean - COLOURS[k]))
    return Label(colour=colour, shape=_shape(mask), background=background)


def _shape(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    if area / _hull_area(xs, ys) < 0.78:
        return STAR
    fill = area / box
    if fill > 0.9:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


def _hull_area(xs: np.ndarray, ys: np.ndarray) -> float:
    """Area of the convex hull of the pixel squares (monotone chain over their corners)."""
    corners = {
        (x + dx, y + dy)
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True)
        for dx in (0, 1)
        for dy in (0, 1)
    }
    points = sorted(corners)

    def half(pts):
        chain: list[tuple[int, int]] = []
        for p in pts:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = half(points) + half(points[::-1])
    x = np.array([p[0] for p in hull], dtype=np.float64)
    y = np.array([p[1] for p in hull], dtype=np.float64)
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def _cross(o, a, b) -> int:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of `mask` (stray specks are not the shape)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)
