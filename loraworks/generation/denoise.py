"""Our denoise loop over diffusers' UNet, VAE and schedulers.

Why not diffusers' pipelines: we skip the unconditional UNet pass whenever CFG ≤ 1 (the LCM
case; peers run it anyway and pay 2x), batch cond+uncond into one UNet call otherwise, and
check for cancellation between steps. Everything else (noise draw order, timestep slicing for
img2img, scaling) follows diffusers so that the same seed gives the same latents.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from loraworks.generation.conditioning import Conditioning
from loraworks.generation.errors import GenerationError
from loraworks.generation.placement import placement

# (step index, total steps, latents after the step); may raise to stop the loop
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class DenoiseJob:
    """Everything one image's denoise needs besides the model and its conditioning."""

    scheduler: SchedulerMixin
    steps: int
    cfg: float
    width: int
    height: int
    generator: torch.Generator  # CPU, seeded per image: same seed, same noise on any device
    init_image: Image.Image | None = None
    strength: float = 1.0
    eta: float = 0.0  # for schedulers whose step takes one (TCD's gamma, DDIM's eta)

    @property
    def guided(self) -> bool:
        return self.cfg > 1.0


def vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _randn(shape: tuple[int, ...], job: DenoiseJob, like: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(shape, generator=job.generator, dtype=like.dtype)
    return noise.to(like.device)


def _image_to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    image = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2.0 - 1.0


@torch.no_grad()
def _initial_latents(pipe: Any, job: DenoiseJob, timesteps: torch.Tensor) -> torch.Tensor:
    unet, vae = pipe.unet, pipe.vae
    f = vae_scale_factor(vae)
    shape = (1, unet.config.in_channels, job.height // f, job.width // f)
    device, dtype = placement(unet)
    like = torch.empty(0, device=device, dtype=dtype)
    if job.init_image is None:
        return _randn(shape, job, like) * job.scheduler.init_noise_sigma
    pixels = _image_to_tensor(job.init_image, job.width, job.height).to(*placement(vae))
    init = vae.encode(pixels).latent_dist.sample(job.generator) * vae.config.scaling_factor
    init = init.to(like)
    return job.scheduler.add_noise(init, _randn(shape, job, like), timesteps[:1])


def _timesteps(job: DenoiseJob, device: torch.device) -> torch.Tensor:
    """The schedule; img2img starts part-way in, as diffusers' img2img pipelines do."""
    scheduler = job.scheduler
    scheduler.set_timesteps(job.steps, device=device)
    if job.init_image is None:
        return scheduler.timesteps
    start = job.steps - min(int(job.steps * job.strength), job.steps)
    if start >= job.steps:
        raise ValueError(f"strength {job.strength} with {job.steps} steps leaves no step to run")
    begin = start * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return scheduler.timesteps[begin:]


def _step_kwargs(job: DenoiseJob) -> dict[str, Any]:
    accepted = inspect.signature(job.scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in accepted:
        kwargs["generator"] = job.generator
    if "eta" in accepted:
        kwargs["eta"] = job.eta
    return kwargs


@torch.no_grad()
def denoise(
    pipe: Any, cond: Conditioning, job: DenoiseJob, on_step: StepCallback | None = None
) -> torch.Tensor:
    """Latents for one image. The UNet runs once per step with batch 1 when CFG ≤ 1 and
    once with batch 2 ([uncond, cond]) otherwise."""
    unet, scheduler = pipe.unet, job.scheduler
    timesteps = _timesteps(job, placement(unet)[0])
    latents = _initial_latents(pipe, job, timesteps)
    step_kwargs = _step_kwargs(job)
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if job.guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = unet(
            model_input,
            t,
            encoder_hidden_states=cond.embeds,
            added_cond_kwargs=cond.added,
            return_dict=False,
        )[0]
        if job.guided:
            uncond, text = noise.chunk(2)
            noise = uncond + job.cfg * (text - uncond)
        latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        if on_step is not None:
            on_step(i, total, latents)
    return latents


@torch.no_grad()
def decode(vae: Any, latents: torch.Tensor) -> Image.Image:
    """Latents → 8-bit RGB, rounded the way diffusers' image processor rounds. A VAE that
    overflows in fp16 (SDXL's, `force_upcast`) decodes in fp32; pixels that are still not
    finite are a `GenerationError`, never a black image."""
    dtype = placement(vae)[1]
    upcast = dtype == torch.float16 and vae.config.get("force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        scaled = latents.to(torch.float32 if upcast else dtype) / vae.config.scaling_factor
        pixels = vae.decode(scaled, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(torch.float16)
    if not torch.isfinite(pixels).all():  # clamped and cast, NaN would be saved as black
        raise GenerationError(
            "the image decoded to non-finite values (NaN or infinity) and was not saved: usually "
            "a LoRA weight or prompt emphasis far outside the usual range, or a model that "
            "overflows at this precision (try float32)"
        )
    pixels = (pixels / 2 + 0.5).clamp(0, 1)
    array = pixels[0].permute(1, 2, 0).float().cpu().numpy()
    return Image.fromarray((array * 255).round().astype("uint8"))
