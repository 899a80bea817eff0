"""Gallery images: list (paged, newest first), PNG, recipe, delete.

Images are addressed by their integer record id only, and a file is served only when it lies
under the root's `outputs/`, so no request can reach another file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel

from loraworks.models.records import ImageRecord
from loraworks.server.errors import ApiError
from loraworks.server.events import ImageRef
from loraworks.server.state import ServerState, server_state

router = APIRouter(prefix="/images", tags=["images"])
State = Annotated[ServerState, Depends(server_state)]


class ImageOut(ImageRef):
    created_at: str
    recipe: dict[str, Any]


class ImagePage(BaseModel):
    items: list[ImageOut]
    offset: int
    limit: int
    has_more: bool


def image_ref(image_id: int) -> ImageRef:
    return ImageRef(
        id=image_id, url=f"/api/images/{image_id}", recipe_url=f"/api/images/{image_id}/recipe"
    )


def _file(state: ServerState, record: ImageRecord) -> Path:
    outputs = state.manager.paths.outputs.resolve()
    path = Path(record.path).resolve()
    if not path.is_relative_to(outputs):
        raise ApiError(403, f"Image {record.id} lies outside the outputs folder; not served.")
    if not path.is_file():
        raise ApiError(404, f"The file of image {record.id} is gone ({path.name}).")
    return path


@router.get("")
def list_images(
    state: State,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 24,
) -> ImagePage:
    """Newest first; `has_more` says whether another page exists."""
    records = state.manager.images.list(offset, limit + 1)
    items = [
        ImageOut(**dict(image_ref(r.id)), created_at=r.created_at, recipe=r.recipe)
        for r in records[:limit]
    ]
    return ImagePage(items=items, offset=offset, limit=limit, has_more=len(records) > limit)


@router.get("/{image_id}", response_class=FileResponse)
def get_image(image_id: int, state: State) -> FileResponse:
    """The PNG (its text chunk carries the recipe too)."""
    return FileResponse(_file(state, state.manager.images.get(image_id)), media_type="image/png")


@router.get("/{image_id}/recipe")
def get_recipe(image_id: int, state: State) -> dict[str, Any]:
    return state.manager.images.get(image_id).recipe


@router.delete("/{image_id}")
def delete_image(image_id: int, state: State) -> dict[str, int]:
    """Removes the record and its file."""
    state.manager.images.delete(image_id)
    return {"deleted": image_id}
