"""Several images of one model and one patch in one UNet batch (same-stack batching, #21).

Each image keeps what makes it its own in `render`: its prompt's conditioning, its scheduler
(schedulers keep per-run state) and its seeded CPU generator (initial noise, ancestral steps).
Only the UNet call is shared: per step, the latents of every image still running (and with
CFG, their unconditional copies first, as `denoise` orders one image's) go through the UNet as
one batch, then each image takes its scheduler step on its own slice. So an image differs
from its solo `render` only by the UNet's float rounding at another batch size
(docs/cluster.md, "Same-stack batching": measured and bounded in
tests/generation/test_batched.py).

Images that can share a batch have the same `batch_key`: size and every step setting; an
init image (img2img) is never batched.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch

from loraworks.generation.conditioning import Conditioning, ConditioningCache, encode_prompt
from loraworks.generation.denoise import (  # the solo loop's own pieces, so both agree
    DenoiseJob,
    StepCallback,
    _initial_latents,
    _step_kwargs,
    _timesteps,
    decode,
)
from loraworks.generation.errors import GenerationCancelled
from loraworks.generation.placement import placement
from loraworks.generation.render import Rendered, RenderSettings, denoise_job


def batch_key(s: RenderSettings) -> Hashable | None:
    """Images with equal keys can share a UNet batch; None: this one runs alone."""
    if s.init_image is not None:
        return None
    return (s.width, s.height, s.steps, s.cfg, s.scheduler, s.spacing, s.eta)


@dataclass
class _Image:
    job: DenoiseJob
    cond: Conditioning
    on_step: StepCallback | None
    latents: torch.Tensor
    kwargs: dict[str, Any]


def _conds(images: list[_Image], guided: bool) -> tuple[torch.Tensor, dict | None]:
    """The images' conditionings in the UNet batch's order: all unconditional rows first."""
    halves = [slice(0, 1), slice(1, 2)] if guided else [slice(0, 1)]
    embeds = torch.cat([im.cond.embeds[h] for h in halves for im in images])
    if images[0].cond.added is None:
        return embeds, None
    added = {
        name: torch.cat([im.cond.added[name][h] for h in halves for im in images])
        for name in images[0].cond.added
    }
    return embeds, added


@torch.no_grad()
def render_together(
    pipe: Any,
    items: list[RenderSettings],
    on_steps: list[StepCallback | None],
    conds: ConditioningCache | None = None,
) -> list[Rendered | GenerationCancelled]:
    """`render` for each of `items` (one `batch_key`, prompts and seeds free), the UNet run
    once per step for all. An image whose step callback raises `GenerationCancelled` leaves
    the batch there (its result is that exception); the others go on."""
    keys = {batch_key(s) for s in items}
    if len(keys) != 1 or None in keys:
        raise ValueError(f"images of different sizes or step settings in one batch: {keys}")
    encode = conds.encode if conds is not None else encode_prompt
    device = placement(pipe.unet)[0]
    images: list[_Image] = []
    for s, on_step in zip(items, on_steps, strict=True):
        cond = encode(
            pipe, s.prompt, s.negative_prompt, s.cfg > 1.0, s.width, s.height, s.embeddings
        )
        job = denoise_job(pipe, s)
        timesteps = _timesteps(job, device)
        latents = _initial_latents(pipe, job, timesteps)
        images.append(_Image(job, cond, on_step, latents, _step_kwargs(job)))
    if len({im.cond.embeds.shape for im in images}) > 1:  # long prompts: more token chunks
        raise ValueError("prompts of different token lengths in one batch")
    results: list[Rendered | GenerationCancelled | None] = [None] * len(images)
    running = list(range(len(images)))
    guided = images[0].job.guided
    total = len(timesteps)
    for step, t in enumerate(timesteps):
        if not running:
            break
        batch = [images[i] for i in running]
        scaled = [im.job.scheduler.scale_model_input(im.latents, t) for im in batch]
        model_input = torch.cat(scaled * 2 if guided else scaled)
        embeds, added = _conds(batch, guided)
        noise = pipe.unet(
            model_input, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False
        )[0]
        if guided:
            uncond, text = noise.chunk(2)
            noise = uncond + images[0].job.cfg * (text - uncond)
        for row, i in enumerate(list(running)):
            im = images[i]
            im.latents = im.job.scheduler.step(
                noise[row : row + 1], t, im.latents, **im.kwargs, return_dict=False
            )[0]
            if im.on_step is None:
                continue
            try:
                im.on_step(step, total, im.latents)
            except GenerationCancelled as exc:
                results[i] = exc
                running.remove(i)
    for i in running:
        results[i] = Rendered(decode(pipe.vae, images[i].latents), images[i].latents)
    return results  # type: ignore[return-value]  # every entry set above
