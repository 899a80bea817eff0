"""Progress events: per denoise step (the preview is computed only when a listener reads it:
a cheap linear latent→RGB map, no VAE pass), and per component of a main model being loaded."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import torch
from PIL import Image

from loraworks.generation.errors import GenerationCancelled
from loraworks.models.loadevents import LoadProgress

# Linear fits of the VAE decoder (per latent channel → RGB), as used by ComfyUI previews.
_SD_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


def latent_preview(latents: torch.Tensor, sdxl: bool) -> Image.Image:
    """A small (latent-sized, 1/8 of the image) RGB preview of the first latent in the batch."""
    factors = torch.tensor(_SDXL_RGB if sdxl else _SD_RGB)
    bias = torch.tensor(_SDXL_BIAS if sdxl else (0.0, 0.0, 0.0))
    rgb = torch.einsum("chw,cr->hwr", latents[0, :4].float().cpu(), factors) + bias
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(array)


@dataclass(frozen=True)
class StepEvent:
    """One finished denoise step of image `image` (0-based) out of `images`."""

    step: int  # 1-based within this image
    total: int  # steps per image
    elapsed: float  # seconds since the generation started
    image: int = 0
    images: int = 1
    latents: torch.Tensor | None = field(default=None, repr=False, compare=False)
    sdxl: bool = field(default=False, repr=False)

    @cached_property
    def preview(self) -> Image.Image | None:
        return None if self.latents is None else latent_preview(self.latents, self.sdxl)


ProgressCallback = Callable[[StepEvent], None]

#: who hears of model loads (`LoadEvent`s) in this context; the model cache reads it when it
#: loads. Context-local, so each CLI run and each server job hears only its own loads.
load_listener: ContextVar[LoadProgress | None] = ContextVar("load_listener", default=None)


@contextmanager
def reporting_loads(listener: LoadProgress) -> Iterator[None]:
    """Within this block, a main model loaded for a generation tells `listener` of each
    component (`LoadEvent`) as it starts loading."""
    token = load_listener.set(listener)
    try:
        yield
    finally:
        load_listener.reset(token)


class CancelFlag(Protocol):
    """Anything with `is_set()`, e.g. a `threading.Event`."""

    def is_set(self) -> bool: ...


class StepReporter:
    """The denoise loop's step callback: emits `StepEvent`s and honours the cancel flag
    between steps (and before each image)."""

    def __init__(self, progress: ProgressCallback | None, cancel: CancelFlag | None, sdxl: bool):
        self.progress, self.cancel, self.sdxl = progress, cancel, sdxl
        self.start = time.perf_counter()
        self.image, self.images = 0, 1
        #: called with (step index, total) after each step is reported: step windows
        #: (`windows.StepWindows.after_step`) change the LoRA patch there
        self.after_step: Callable[[int, int], None] | None = None

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled("generation cancelled")

    def __call__(self, i: int, total: int, latents: torch.Tensor) -> None:
        if self.progress is not None:
            elapsed = time.perf_counter() - self.start
            self.progress(
                StepEvent(i + 1, total, elapsed, self.image, self.images, latents, self.sdxl)
            )
        self.check()
        if self.after_step is not None:
            self.after_step(i, total)
