"""One image from a loaded pipeline and fully resolved settings: no records, no LoRAs, no
files. `api.generate` wraps this; tests call it directly on fixture pipelines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from loraworks.generation.conditioning import ConditioningCache, PromptEmbeddings, encode_prompt
from loraworks.generation.denoise import (
    DenoiseJob,
    StepCallback,
    decode,
    denoise,
    vae_scale_factor,
)
from loraworks.generation.events import StepReporter
from loraworks.generation.schedulers import build_scheduler


@dataclass(frozen=True)
class RenderSettings:
    """Settings with every default already applied (see `presets.resolve_settings`)."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    cfg: float
    scheduler: str
    seed: int
    #: timestep spacing (None: the model's own) and eta (None: the scheduler takes none)
    spacing: str | None = None
    eta: float | None = None
    init_image: Path | None = None
    strength: float = 1.0
    #: textual-inversion embeddings the prompts may use (None: none)
    embeddings: PromptEmbeddings | None = None


def with_native_size(pipe: Any, s: RenderSettings) -> RenderSettings:
    """An unset (0) width or height becomes the model's native size, as in diffusers'
    pipelines: the UNet's sample_size × the VAE's scale factor (SD1 512, SD2-768 768, SDXL 1024,
    demo-shapes 64). A fixed 512 would halve SDXL's resolution and draw the demo model at 8×
    the size it knows."""
    if s.width and s.height:
        return s
    size = pipe.unet.config.sample_size
    rows, cols = (size, size) if isinstance(size, int) else size
    factor = vae_scale_factor(pipe.vae)
    return replace(s, width=s.width or cols * factor, height=s.height or rows * factor)


@dataclass
class Rendered:
    image: Image.Image
    latents: torch.Tensor


def render(
    pipe: Any,
    s: RenderSettings,
    on_step: StepCallback | None = None,
    conds: ConditioningCache | None = None,
) -> Rendered:
    """`conds`: the loaded model's cache of encoded prompts (None: encode afresh)."""
    guided = s.cfg > 1.0
    encode = conds.encode if conds is not None else encode_prompt
    cond = encode(pipe, s.prompt, s.negative_prompt, guided, s.width, s.height, s.embeddings)
    latents = denoise(pipe, cond, denoise_job(pipe, s), on_step)
    return Rendered(decode(pipe.vae, latents), latents)


def denoise_job(pipe: Any, s: RenderSettings) -> DenoiseJob:
    """`s` as the denoise loop takes it: a fresh scheduler (they keep per-run state) and the
    seeded CPU generator."""
    init = Image.open(s.init_image) if s.init_image is not None else None
    return DenoiseJob(
        scheduler=build_scheduler(s.scheduler, pipe.scheduler.config, s.spacing),
        steps=s.steps,
        cfg=s.cfg,
        width=s.width,
        height=s.height,
        generator=torch.Generator("cpu").manual_seed(s.seed),
        init_image=init,
        strength=s.strength,
        eta=s.eta or 0.0,
    )


def render_seeds(
    pipe: Any,
    s: RenderSettings,
    count: int,
    steps: StepReporter,
    conds: ConditioningCache | None = None,
) -> Iterator[tuple[RenderSettings, Rendered]]:
    """`count` images with seeds S…S+count−1 (a request's batch), each with its settings;
    `steps` is told which image runs and may cancel between them."""
    steps.images = count
    for i in range(count):
        steps.image = i
        steps.check()
        seeded = replace(s, seed=s.seed + i)
        yield seeded, render(pipe, seeded, steps, conds)
