"""Defaults the UI needs: generation defaults, the LCM preset, the scheduler names and where
models run."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from loraworks.generation.cache import compute_summary
from loraworks.generation.schedulers import SchedulerName
from loraworks.models.config import GenerationDefaults, LCMPreset
from loraworks.server.state import ServerState, server_state

router = APIRouter(tags=["settings"])
State = Annotated[ServerState, Depends(server_state)]


class SettingsOut(BaseModel):
    generation: GenerationDefaults
    lcm: LCMPreset
    schedulers: list[str]
    compute: str  # e.g. "cuda:0 (NVIDIA H100 80GB HBM3), float16" or "cpu, float32"


@router.get("/settings")
def get_settings(state: State) -> SettingsOut:
    config = state.manager.config
    try:
        compute = compute_summary(config.compute)
    except ValueError as exc:  # a device this machine lacks: `serve` refuses it at start
        compute = f"unavailable ({exc})"
    return SettingsOut(
        generation=config.generation,
        lcm=config.lcm,
        schedulers=list(get_args(SchedulerName)),
        compute=compute,
    )
