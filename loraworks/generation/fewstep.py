"""Few-step presets (#18): which family's `config.toml` preset a request gets (LCM, TCD,
SDXL-Lightning, Hyper-SD, PCM), and the sampling it fills in — scheduler, spacing, eta, steps,
CFG — for the fields the request leaves unset, with a warning where set fields fight it.

The family comes from the request's `preset`, else from the first LoRA of the stack that has
one (record `fewstep`), else from the main model. The steps the family's file was distilled
for (its name: `sdxl_lightning_4step_lora`) beat the preset's `steps`: a 2-step Lightning file
sampled at 4 steps over-cooks.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraworks.generation.errors import GenerationError
from loraworks.generation.request import GenerateRequest
from loraworks.generation.schedulers import SCHEDULERS, default_eta, takes_spacing
from loraworks.models import ModelRecord
from loraworks.models.config import Config, FewStepPreset

# Beyond these a few-step LoRA is being misused: slow, and the images over-cook. A file
# distilled for more steps (Hyper-SD's 12-step ones) raises the step bound to its own.
FEWSTEP_MAX_STEPS = 8
FEWSTEP_MAX_CFG = 2.0


@dataclass(frozen=True)
class FewStep:
    """The preset in play: its family ("none": the config's generation defaults), the LoRA
    that brought it and the step count that LoRA's file states."""

    family: str
    preset: FewStepPreset | None = None
    lora: ModelRecord | None = None

    @property
    def file_steps(self) -> int | None:
        return self.lora.fewstep_steps if self.lora is not None else None


@dataclass(frozen=True)
class Sampling:
    scheduler: str
    spacing: str | None
    eta: float | None
    steps: int
    cfg: float


def choose(
    request: GenerateRequest, main: ModelRecord, loras: list[ModelRecord], config: Config
) -> tuple[FewStep, list[str]]:
    """The family whose preset applies, and a warning when the stack mixes families."""
    distilled = [r for r in loras if r.fewstep != "none"]
    family = request.preset or (
        distilled[0].fewstep if distilled else main.fewstep if main.fewstep != "none" else "none"
    )
    if family == "none":
        return FewStep("none"), []
    lora = next((r for r in distilled if r.fewstep == family), None)
    warnings = []
    others = sorted({f"{r.name} ({r.fewstep})" for r in distilled if r.fewstep != family})
    if others:
        warnings.append(
            f"LoRAs of other few-step families ({', '.join(others)}) are stacked with the "
            f"'{family}' preset, which applies; they were made for other sampling"
        )
    if request.preset and lora is None and main.fewstep != family:
        warnings.append(
            f"preset '{family}' without a {family} LoRA: unless the main model is distilled "
            f"for it, {config.fewstep(family).steps} steps at CFG 1 give a blurry image; add a "
            f"{family} LoRA for this base"
        )
    return FewStep(family, config.fewstep(family), lora), warnings


def _scheduler(name: str, where: str) -> str:
    if name not in SCHEDULERS:
        raise GenerationError(
            f"{where}: unknown scheduler '{name}' (one of {', '.join(SCHEDULERS)})"
        )
    return name


def sampling(
    request: GenerateRequest, config: Config, fewstep: FewStep
) -> tuple[Sampling, list[str]]:
    """The request's sampling with its unset fields filled by the preset (or the config's
    generation defaults when no family is in play)."""
    warnings: list[str] = []
    p = fewstep.preset
    if p is None:
        g = config.generation
        scheduler = request.scheduler or _scheduler(g.scheduler, "config.toml [generation]")
        planned = Sampling(scheduler, None, None, g.steps, g.cfg)
    else:
        where = f"config.toml [{fewstep.family}]"
        override = p.by_steps.get(fewstep.file_steps or 0)
        planned = Sampling(
            _scheduler((override and override.scheduler) or p.scheduler, where),
            (override and override.spacing) or p.spacing,
            override.eta if override and override.eta is not None else p.eta,
            fewstep.file_steps or p.steps,
            override.cfg if override and override.cfg is not None else p.cfg,
        )
    scheduler = request.scheduler or planned.scheduler
    spacing = request.spacing
    if not takes_spacing(scheduler):
        if spacing is not None:
            warnings.append(
                f"spacing '{spacing}' is ignored: scheduler {scheduler} steps along its own "
                "distillation schedule"
            )
        spacing = None
    elif spacing is None and request.scheduler is None:  # a scheduler set keeps its spacing:
        spacing = planned.spacing  # a recipe re-runs with the model's own, as it was made
    eta = request.eta
    if default_eta(scheduler) is None:
        if eta is not None:
            warnings.append(f"eta {eta:g} has no effect with scheduler {scheduler} (tcd, ddim)")
        eta = None
    elif eta is None:
        same = scheduler == planned.scheduler and planned.eta is not None
        eta = planned.eta if same else default_eta(scheduler)
    steps = request.steps if request.steps is not None else planned.steps
    cfg = request.cfg if request.cfg is not None else planned.cfg
    chosen = Sampling(scheduler, spacing, eta, steps, cfg)
    return chosen, warnings + _fights(fewstep, planned, chosen)


def _fights(fewstep: FewStep, planned: Sampling, s: Sampling) -> list[str]:
    """Set fields that fight the preset of a few-step LoRA in the stack."""
    if fewstep.lora is None:
        return []
    off = []
    if s.scheduler != planned.scheduler:
        off.append(f"scheduler {s.scheduler}")
    if s.spacing != planned.spacing and takes_spacing(s.scheduler):
        off.append(f"{s.spacing or 'the model’s own'} spacing")
    file_steps = fewstep.file_steps
    if file_steps is not None and s.steps != file_steps:
        off.append(f"{s.steps} steps (its file is made for {file_steps})")
    elif file_steps is None and s.steps > FEWSTEP_MAX_STEPS:
        off.append(f"{s.steps} steps")
    if planned.cfg <= 1.0 and s.cfg > FEWSTEP_MAX_CFG:
        off.append(f"CFG {s.cfg:g}")
    if not off:
        return []
    spacing = f" {planned.spacing}" if planned.spacing else ""
    return [
        f"{fewstep.family} LoRA {fewstep.lora.name} is meant for the {planned.scheduler}"
        f"{spacing} scheduler, {planned.steps} steps and CFG {planned.cfg:g}; this request uses "
        f"{', '.join(off)} (slower, or images that over-saturate or blur). Leave "
        "scheduler/spacing/steps/CFG unset to get the preset."
    ]


def preset_weight(record: ModelRecord, fewstep: FewStep) -> float | None:
    """The preset's weight for a LoRA picked without one (None: no preset in play)."""
    if fewstep.preset is None:
        return None
    if record.fewstep == fewstep.family:
        return fewstep.preset.lora_weight
    return fewstep.preset.other_lora_weight
