"""Scheduler names a user may pick, mapped to diffusers classes built from the main model's own
scheduler config (so beta schedule and prediction type stay the model's), plus the two knobs
few-step LoRAs need: the timestep spacing (SDXL-Lightning, Hyper-SD and PCM want `trailing`,
which starts at the last training timestep) and TCD's `eta` (gamma: how much of each step's
prediction is re-noised)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from loraworks.models.config import Spacing

SchedulerName = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "lcm", "tcd"]
SPACINGS: tuple[str, ...] = get_args(Spacing)


@dataclass(frozen=True)
class SchedulerSpec:
    cls: type[SchedulerMixin]
    overrides: dict[str, Any] = field(default_factory=dict)
    #: whether the class reads `timestep_spacing` (LCM and TCD take evenly spaced steps of
    #: their own distillation schedule instead)
    spaced: bool = True
    #: the `eta` its step takes when the request gives none; None: its step takes no eta
    default_eta: float | None = None


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
    "ddim": SchedulerSpec(DDIMScheduler, default_eta=0.0),
    "lcm": SchedulerSpec(LCMScheduler, spaced=False),
    "tcd": SchedulerSpec(TCDScheduler, spaced=False, default_eta=0.3),
}


def takes_spacing(name: str) -> bool:
    return SCHEDULERS[name].spaced


def default_eta(name: str) -> float | None:
    return SCHEDULERS[name].default_eta


def build_scheduler(name: str, model_config: Any, spacing: str | None = None) -> SchedulerMixin:
    """A fresh scheduler (they hold per-run state, so one per generation); `spacing` None
    keeps the model's own (SD1/SDXL ship `leading`)."""
    spec = SCHEDULERS[name]
    overrides = dict(spec.overrides)
    if spacing is not None:
        if not spec.spaced:
            raise ValueError(f"scheduler {name} takes no timestep spacing")
        overrides["timestep_spacing"] = spacing
    return spec.cls.from_config(model_config, **overrides)
