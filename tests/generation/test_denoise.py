"""Our denoise loop against diffusers' own pipelines on the same tiny models: same latents at
every step, and the UNet call pattern (CFG skip at ≤ 1, one batched call otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from loraworks.generation.render import RenderSettings, render
from loraworks.generation.schedulers import SCHEDULERS, build_scheduler
from tests.fixtures.models import BASES
from tests.generation.conftest import SIZE

PROMPT = "a red circle on a white background"


def _settings(**kw) -> RenderSettings:
    base = dict(
        prompt=PROMPT,
        negative_prompt=None,
        width=SIZE,
        height=SIZE,
        steps=4,
        cfg=1.0,
        scheduler="lcm",
        seed=7,
    )
    return RenderSettings(**{**base, **kw})


def _ours(pipe, s: RenderSettings) -> list[torch.Tensor]:
    steps: list[torch.Tensor] = []
    render(pipe, s, lambda i, n, latents: steps.append(latents.clone()))
    return steps


def _diffusers(pipe, s: RenderSettings, scheduler=None, **extra) -> list[torch.Tensor]:
    """Latents after each step from diffusers' own pipeline with the same scheduler (or with
    `scheduler`, built by the caller)."""
    steps: list[torch.Tensor] = []

    def grab(_pipe, _i, _t, kwargs):
        steps.append(kwargs["latents"].clone())
        return kwargs

    original = pipe.scheduler
    pipe.scheduler = scheduler or build_scheduler(s.scheduler, original.config)
    try:
        pipe(
            s.prompt,
            negative_prompt=s.negative_prompt,
            num_inference_steps=s.steps,
            guidance_scale=s.cfg,
            height=s.height,
            width=s.width,
            generator=torch.Generator().manual_seed(s.seed),
            callback_on_step_end=grab,
            output_type="latent",
            **extra,
        )
    finally:
        pipe.scheduler = original
    return steps


def _assert_same_steps(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(ours) == len(ref) > 0
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), f"step {i}: {(a - b).abs().max()}"


@pytest.mark.parametrize("base", BASES)
def test_lcm_path_matches_diffusers_lcm_scheduler_step_for_step(pipes, base):
    s = _settings(scheduler="lcm", steps=4, cfg=1.0)
    _assert_same_steps(_ours(pipes[base], s), _diffusers(pipes[base], s))


@pytest.mark.parametrize("base", BASES)
def test_guided_euler_with_negative_prompt_matches_diffusers(pipes, base):
    s = _settings(scheduler="euler", steps=3, cfg=7.5, negative_prompt="blurry")
    _assert_same_steps(_ours(pipes[base], s), _diffusers(pipes[base], s))


def test_sdxl_without_negative_prompt_uses_zero_uncond_like_diffusers(pipes):
    s = _settings(scheduler="euler", steps=2, cfg=5.0)
    _assert_same_steps(_ours(pipes["sdxl"], s), _diffusers(pipes["sdxl"], s))


@pytest.mark.parametrize("scheduler", sorted(set(SCHEDULERS) - {"lcm", "euler"}))
def test_every_scheduler_matches_diffusers(pipes, scheduler):
    s = _settings(scheduler=scheduler, steps=2, cfg=3.0)
    _assert_same_steps(_ours(pipes["sd1"], s), _diffusers(pipes["sd1"], s))


def test_img2img_matches_diffusers_img2img_pipeline(pipes, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "init.png"
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    s = _settings(scheduler="euler", steps=4, cfg=2.0, init_image=path, strength=0.5)
    ours = _ours(pipes["sd1"], s)
    assert len(ours) == 2  # strength 0.5 of 4 steps
    img2img = StableDiffusionImg2ImgPipeline(**pipes["sd1"].components)
    ref = _diffusers(img2img, s, image=Image.open(path), strength=0.5)
    _assert_same_steps(ours, ref)


class _UNetCalls:
    """Counts UNet forward calls and the batch size of each."""

    def __init__(self, unet: torch.nn.Module):
        self.batches: list[int] = []
        self._handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs):
        self.batches.append((args[0] if args else kwargs["sample"]).shape[0])

    def close(self) -> None:
        self._handle.remove()


@pytest.mark.parametrize(("base", "cfg"), [("sd1", 0.0), ("sd1", 1.0), ("sd2", 1.0), ("sdxl", 1.0)])
def test_cfg_at_most_one_runs_the_unet_once_per_step_with_batch_one(pipes, base, cfg):
    calls = _UNetCalls(pipes[base].unet)
    try:
        render(pipes[base], _settings(scheduler="euler", steps=3, cfg=cfg))
    finally:
        calls.close()
    assert calls.batches == [1, 1, 1]


@pytest.mark.parametrize("base", BASES)
def test_cfg_above_one_batches_cond_and_uncond_in_one_call(pipes, base):
    calls = _UNetCalls(pipes[base].unet)
    try:
        render(pipes[base], _settings(scheduler="euler", steps=3, cfg=1.5))
    finally:
        calls.close()
    assert calls.batches == [2, 2, 2]


def test_same_seed_same_pixels_other_seed_other_pixels(pipes):
    s = _settings(scheduler="euler_a", steps=3, cfg=4.0)
    first = np.asarray(render(pipes["sd1"], s).image)
    again = np.asarray(render(pipes["sd1"], s).image)
    other = np.asarray(render(pipes["sd1"], _settings(scheduler="euler_a", seed=8)).image)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
