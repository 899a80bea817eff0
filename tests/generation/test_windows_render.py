"""Step windows on the denoise loop, against diffusers' own pipeline whose step callback
switches the LoRA by hand (the truth: a LoRA present for exactly those steps)."""

from __future__ import annotations

import pytest
import torch

from loraworks.generation.render import RenderSettings, render
from loraworks.generation.windows import StepWindows, first_stack
from loraworks.lora import LoRAPatcher, load_lora
from tests.generation.conftest import SIZE, pipeline_weights
from tests.generation.loras import write_lora

SETTINGS = RenderSettings(
    prompt="a red circle",
    negative_prompt=None,
    width=SIZE,
    height=SIZE,
    steps=3,
    cfg=1.0,
    scheduler="euler",
    seed=7,
)
EVERY = ("unet", "text_encoder", "text_encoder_2")


def _ours(pipe, patcher, stack) -> list[torch.Tensor]:
    windows = StepWindows(patcher, stack)
    patcher.set(first_stack(stack))
    steps: list[torch.Tensor] = []

    def on_step(i, n, latents):
        steps.append(latents.clone())
        windows.after_step(i, n)

    render(pipe, SETTINGS, on_step)
    return steps


def _diffusers(pipe, patcher, before: list, after: list, switch_after: int) -> list[torch.Tensor]:
    """diffusers' pipeline with stack `before`, set to `after` once step `switch_after` (from
    1) has run."""
    steps: list[torch.Tensor] = []

    def grab(_pipe, i, _t, kwargs):
        steps.append(kwargs["latents"].clone())
        if i + 1 == switch_after:
            patcher.set(after)
        return kwargs

    patcher.set(before)
    pipe(
        SETTINGS.prompt,
        num_inference_steps=SETTINGS.steps,
        guidance_scale=SETTINGS.cfg,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(SETTINGS.seed),
        callback_on_step_end=grab,
        output_type="latent",
    )
    return steps


@pytest.fixture(scope="module")
def sd1(pipes, tmp_path_factory):
    pipe = pipes["sd1"]
    lora = load_lora(write_lora(pipe, tmp_path_factory.mktemp("w") / "a.safetensors", seed=5))
    patcher = LoRAPatcher(pipe)
    before = pipeline_weights(pipe)
    yield pipe, lora, patcher
    patcher.restore()
    after = pipeline_weights(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical after


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        torch.allclose(x, y, atol=1e-5, rtol=0) for x, y in zip(a, b, strict=True)
    )


def test_stop_two_is_the_lora_for_step_one_only(sd1):
    pipe, lora, patcher = sd1
    ours = _ours(pipe, patcher, [(lora, {**dict.fromkeys(EVERY, 1.0), "stop": 2})])
    ref = _diffusers(pipe, patcher, [(lora, 1.0)], [], switch_after=1)
    assert _close(ours, ref)
    plain = _diffusers(pipe, patcher, [(lora, 1.0)], [(lora, 1.0)], switch_after=0)
    assert not _close(ours, plain)
    patcher.restore()


def test_start_two_leaves_the_prompt_and_step_one_unpatched(sd1):
    pipe, lora, patcher = sd1
    ours = _ours(pipe, patcher, [(lora, {**dict.fromkeys(EVERY, 1.0), "start": 0.5})])
    unet_only = {"unet": 1.0, "text_encoder": 0.0, "text_encoder_2": 0.0}
    ref = _diffusers(pipe, patcher, [], [(lora, unet_only)], switch_after=2)
    assert _close(ours, ref)  # 3 steps: 0.0, 0.33 before 0.5; step 3 at 0.67 inside
    none = _diffusers(pipe, patcher, [], [], switch_after=0)
    assert not _close(ours, none)
    patcher.restore()
