"""The gallery of generated images: generation adds, the server and UI list and delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraworks.models.database import Database
from loraworks.models.errors import ImageNotFound
from loraworks.models.records import ImageRecord

#: SQLite's largest integer: a larger id names no image (and would overflow the query)
MAX_ID = 2**63 - 1


class Gallery:
    """Images under `outputs/` with the recipe that made each, newest first."""

    def __init__(self, db: Database, outputs: Path) -> None:
        self._db = db
        self._outputs = outputs

    def add(self, path: str | Path, recipe: dict[str, Any]) -> ImageRecord:
        return self._db.add_image(Path(path).resolve(), recipe)

    def list(self, offset: int = 0, limit: int = 50) -> list[ImageRecord]:
        return self._db.images(max(offset, 0), max(limit, 0))

    def count(self) -> int:
        return self._db.count_images()

    def get(self, image_id: int) -> ImageRecord:
        found = self._db.image(image_id) if 0 <= image_id <= MAX_ID else None
        if found is None:
            raise ImageNotFound(f"no image with id {image_id}")
        return found

    def delete(self, image_id: int) -> None:
        """Forget the image and delete its file when it lives under `outputs/`."""
        image = self.get(image_id)
        self._db.delete_image(image_id)
        if image.path.resolve().is_relative_to(self._outputs.resolve()):
            image.path.unlink(missing_ok=True)
