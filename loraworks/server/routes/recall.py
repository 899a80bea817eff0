"""Recall: the settings a PNG holds (ours, A1111, InvokeAI, ComfyUI) as request fields for the
installed models, and what does not map. The browser sends the PNG's text chunks only (it
reads them itself), so no image is uploaded; the web UI fills its form from the answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from loraworks.generation import recalled
from loraworks.server.state import ServerState, server_state

router = APIRouter(tags=["recall"])
State = Annotated[ServerState, Depends(server_state)]


class RecallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunks: dict[Annotated[str, Field(max_length=80)], str] = Field(
        max_length=64, description="the PNG's text chunks: keyword -> text"
    )
    name: str = Field("image", max_length=255, description="the file's name, for messages")


class RecallOut(BaseModel):
    source: str  # "loraworks", "A1111", "InvokeAI", "ComfyUI"
    settings: dict[str, Any]  # GenerateRequest fields; model and LoRAs by record key
    unmapped: list[str]  # what has no counterpart here or is not installed


@router.post("/recall")
def recall_settings(body: RecallIn, state: State) -> RecallOut:
    """What the image's settings are here; a PNG without settings is a 400 saying so."""
    found = recalled.settings_from_chunks(body.chunks, body.name, state.manager)
    return RecallOut(source=found.source, settings=found.settings, unmapped=found.unmapped)
