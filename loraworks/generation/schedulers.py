"""Scheduler names a user may pick, mapped to diffusers classes built from the main model's own
scheduler config (so beta schedule, prediction type and timestep spacing stay the model's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SchedulerName = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "lcm"]


@dataclass(frozen=True)
class SchedulerSpec:
    cls: type[SchedulerMixin]
    overrides: dict[str, Any] = field(default_factory=dict)


_DPMPP_2M = dict(algorithm_type="dpmsolver++", solver_order=2)

SCHEDULERS: dict[str, SchedulerSpec] = {
    "euler": SchedulerSpec(EulerDiscreteScheduler),
    "euler_a": SchedulerSpec(EulerAncestralDiscreteScheduler),
    "dpmpp_2m": SchedulerSpec(
        DPMSolverMultistepScheduler, dict(_DPMPP_2M, use_karras_sigmas=False)
    ),
    "dpmpp_2m_karras": SchedulerSpec(
        DPMSolverMultistepScheduler, dict(_DPMPP_2M, use_karras_sigmas=True)
    ),
    "ddim": SchedulerSpec(DDIMScheduler),
    "lcm": SchedulerSpec(LCMScheduler),
}


def build_scheduler(name: str, model_config: Any) -> SchedulerMixin:
    """A fresh scheduler (they hold per-run state, so one per generation)."""
    spec = SCHEDULERS[name]
    return spec.cls.from_config(model_config, **spec.overrides)
