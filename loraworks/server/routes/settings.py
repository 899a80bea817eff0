"""Defaults the UI needs: generation defaults, the LCM preset and the scheduler names."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from loraworks.generation.schedulers import SchedulerName
from loraworks.models.config import GenerationDefaults, LCMPreset
from loraworks.server.state import ServerState, server_state

router = APIRouter(tags=["settings"])
State = Annotated[ServerState, Depends(server_state)]


class SettingsOut(BaseModel):
    generation: GenerationDefaults
    lcm: LCMPreset
    schedulers: list[str]


@router.get("/settings")
def get_settings(state: State) -> SettingsOut:
    config = state.manager.config
    return SettingsOut(
        generation=config.generation, lcm=config.lcm, schedulers=list(get_args(SchedulerName))
    )
