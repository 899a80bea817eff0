"""Models: list/filter, get, install, rescan autoimport, edit, delete, preview image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from loraworks.models import sidecars
from loraworks.models.fewstep import FewStep
from loraworks.models.records import BaseName, ModelRecord, ModelType, ScanReport
from loraworks.server.errors import ApiError
from loraworks.server.state import ServerState, server_state

router = APIRouter(prefix="/models", tags=["models"])
State = Annotated[ServerState, Depends(server_state)]
PREVIEW_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


class ModelOut(ModelRecord):
    preview_url: str | None = None

    @classmethod
    def of(cls, record: ModelRecord) -> ModelOut:
        url = f"/api/models/{record.key}/preview" if record.preview_path else None
        return cls(**dict(record), preview_url=url)


class InstallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(
        min_length=1, max_length=4096, description="file, folder, URL or Hugging Face repo id"
    )
    copy_into_root: bool = Field(True, description="copy into models/ (else register in place)")
    progress_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="a name for this install: GET /api/models/install/{progress_id} says "
        "where it is while it runs",
    )


class InstallProgressOut(BaseModel):
    """Where a running install is: `done` of `total` bytes (None: unknown) of `stage`."""

    stage: str | None  # download | hash | copy | probe; None: not started yet
    done: int = 0
    total: int | None = None
    name: str = ""


class ModelEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    trigger_words: list[Annotated[str, Field(max_length=500)]] | None = Field(None, max_length=100)
    default_weight: float | None = Field(None, ge=-10, le=10)
    description: str | None = Field(None, max_length=10_000)
    fewstep: FewStep | None = Field(None, description="few-step family: which preset it brings")


class ScanOut(BaseModel):
    """What a rescan changed, by model name; duplicates and errors with their reasons."""

    added: list[str]
    updated: list[str]
    missing: list[str]
    duplicates: list[str]
    errors: list[str]
    unchanged: int

    @classmethod
    def of(cls, report: ScanReport) -> ScanOut:
        return cls(
            added=[r.name for r in report.added],
            updated=[r.name for r in report.updated],
            missing=[r.name for r in report.missing],
            duplicates=[d.message for d in report.duplicates],
            errors=[f"{r.name}: {r.error}" for r in report.errors],
            unchanged=report.unchanged,
        )


@router.get("", response_model=list[ModelOut], response_model_exclude={"__all__": {"metadata"}})
def list_models(
    state: State, type: ModelType | None = None, base: BaseName | None = None
) -> list[ModelOut]:
    """Installed models (without their raw metadata; get one model for that)."""
    return [ModelOut.of(r) for r in state.manager.list(type=type, base=base)]


@router.get("/{key}")
def get_model(key: str, state: State) -> ModelOut:
    return ModelOut.of(state.manager.get(key))


@router.post("/install", status_code=201)
async def install_model(body: InstallRequest, state: State, request: Request) -> ModelOut:
    """Install a file, folder, URL or repo id; refused with the reason if it is not a model.
    Runs off the request threads, within `limits.install_timeout_s` (408 after it)."""
    record = await state.installs.install(
        request, body.source, body.copy_into_root, body.progress_id
    )
    return ModelOut.of(record)


@router.get("/install/{progress_id}")
def install_progress(progress_id: str, state: State) -> InstallProgressOut:
    """Where the install named `progress_id` is while it runs (404 once it has ended)."""
    try:
        step = state.installs.progress(progress_id)
    except KeyError:
        raise ApiError(404, f"no install named {progress_id!r} is running") from None
    if step is None:
        return InstallProgressOut(stage=None)
    return InstallProgressOut(stage=step.stage, done=step.done, total=step.total, name=step.name)


@router.post("/scan")
def scan_models(state: State) -> ScanOut:
    """Rescan the autoimport folders now (the watcher does this on its own while serving)."""
    return ScanOut.of(state.manager.scan())


@router.patch("/{key}")
def edit_model(key: str, body: ModelEdit, state: State) -> ModelOut:
    """Edit name, trigger words, default weight, description or few-step family; edits survive
    rescans."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ApiError(
            400,
            "Nothing to change: send name, trigger_words, default_weight, description or fewstep.",
        )
    return ModelOut.of(state.manager.update(state.manager.get(key).key, **changes))


@router.delete("/{key}")
def delete_model(key: str, state: State) -> dict[str, str]:
    record = state.manager.get(key)
    state.manager.remove(record.key)
    return {"deleted": record.key}


@router.get("/{key}/preview", response_class=FileResponse)
def model_preview(key: str, state: State) -> FileResponse:
    record = state.manager.get(key)
    path = Path(record.preview_path) if record.preview_path else None
    if (
        path is None
        or path.suffix.lower() not in PREVIEW_SUFFIXES
        or not sidecars.usable(path, sidecars.MAX_PREVIEW_BYTES)
    ):
        raise ApiError(404, f"Model {record.name!r} has no preview image.")
    return FileResponse(path.resolve())
