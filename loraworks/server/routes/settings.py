"""Defaults the UI needs: generation defaults, the few-step presets, the scheduler and spacing
names, where models run and the block-weight presets."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from loraworks.generation.cache import compute_summary
from loraworks.generation.schedulers import SPACINGS, SchedulerName
from loraworks.lora import LBW_PRESETS
from loraworks.models.config import FewStepPreset, GenerationDefaults
from loraworks.models.fewstep import PresetName
from loraworks.server.state import ServerState, server_state

router = APIRouter(tags=["settings"])
State = Annotated[ServerState, Depends(server_state)]


class SettingsOut(BaseModel):
    generation: GenerationDefaults
    fewstep: dict[str, FewStepPreset]  # by family (a record's `fewstep`)
    schedulers: list[str]
    spacings: list[str]
    compute: str  # e.g. "cuda:0 (NVIDIA H100 80GB HBM3), float16" or "cpu, float32"
    lbw_presets: list[str]  # block-weight presets: the extension's, then config's [lbw_presets]


@router.get("/settings")
def get_settings(state: State) -> SettingsOut:
    config = state.manager.config
    try:
        compute = compute_summary(config.compute)
    except ValueError as exc:  # a device this machine lacks: `serve` refuses it at start
        compute = f"unavailable ({exc})"
    return SettingsOut(
        generation=config.generation,
        fewstep={family: config.fewstep(family) for family in get_args(PresetName)},
        schedulers=list(get_args(SchedulerName)),
        spacings=list(SPACINGS),
        compute=compute,
        lbw_presets=[*LBW_PRESETS, *config.lbw_presets],
    )
