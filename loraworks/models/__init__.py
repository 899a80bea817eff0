"""Model manager: the models root, its config, SQLite records, installs and autoimport."""

from loraworks.models.errors import ImageNotFound, ModelError, ModelNotFound, UnsafeFileError
from loraworks.models.manager import ModelManager
from loraworks.models.progress import InstallProgress
from loraworks.models.records import Duplicate, ImageRecord, ModelRecord, ScanReport

__all__ = [
    "Duplicate",
    "ImageNotFound",
    "ImageRecord",
    "InstallProgress",
    "ModelError",
    "ModelManager",
    "ModelNotFound",
    "ModelRecord",
    "ScanReport",
    "UnsafeFileError",
]
