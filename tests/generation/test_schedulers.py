"""Few-step sampling against diffusers' own classes (#18): the `tcd` path step for step with
`TCDScheduler` at several etas, and the timesteps of every spaced scheduler at 1, 2, 4 and 8
steps for each spacing (trailing also against the formula Lightning/Hyper-SD publish)."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    TCDScheduler,
)

from loraworks.generation.schedulers import SCHEDULERS, SPACINGS, build_scheduler
from tests.generation.test_denoise import _assert_same_steps, _diffusers, _ours, _settings

# Each spaced scheduler as diffusers users build it, written out here (not read from ours).
REFERENCE = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
}


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_tcd_matches_diffusers_tcd_scheduler_step_for_step(pipes, base, eta):
    pipe = pipes[base]
    s = _settings(scheduler="tcd", steps=4, cfg=1.0, eta=eta)
    ref = _diffusers(pipe, s, TCDScheduler.from_config(pipe.scheduler.config), eta=eta)
    _assert_same_steps(_ours(pipe, s), ref)


def test_tcd_eta_changes_the_latents(pipes):
    """The eta reaches the step: 0.3 and 1.0 re-noise differently (same seed)."""
    a = _ours(pipes["sd1"], _settings(scheduler="tcd", steps=4, eta=0.3))[-1]
    b = _ours(pipes["sd1"], _settings(scheduler="tcd", steps=4, eta=1.0))[-1]
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_spaced_timesteps_equal_diffusers(pipes, name, spacing, steps):
    config = pipes["sd1"].scheduler.config
    cls, kwargs = REFERENCE[name]
    ref = cls.from_config(config, timestep_spacing=spacing, **kwargs)
    ours = build_scheduler(name, config, spacing)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps), (ours.timesteps, ref.timesteps)
    if spacing == "trailing" and name in ("euler", "ddim"):  # from the last training step down
        hand = [round(1000 - k * 1000 / steps) - 1 for k in range(steps)]
        assert ours.timesteps.tolist() == hand


def test_no_spacing_keeps_the_model_config(pipes):
    config = pipes["sd1"].scheduler.config
    assert build_scheduler("euler", config).config.timestep_spacing == config.timestep_spacing


def test_trailing_euler_renders_like_diffusers(pipes):
    """Lightning's sampling end to end: Euler trailing, 4 steps, CFG 0."""
    pipe = pipes["sd1"]
    s = _settings(scheduler="euler", spacing="trailing", steps=4, cfg=0.0)
    ref_scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing"
    )
    _assert_same_steps(_ours(pipe, s), _diffusers(pipe, s, ref_scheduler))


@pytest.mark.parametrize("name", [n for n, spec in SCHEDULERS.items() if not spec.spaced])
def test_lcm_and_tcd_refuse_a_spacing(pipes, name):
    with pytest.raises(ValueError, match="takes no timestep spacing"):
        build_scheduler(name, pipes["sd1"].scheduler.config, "trailing")
