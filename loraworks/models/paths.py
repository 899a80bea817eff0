"""The models root: where it is and the folders it holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "LORAWORKS_ROOT"
DEFAULT_ROOT = "~/loraworks"


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """Argument, else `LORAWORKS_ROOT`, else `~/loraworks`."""
    chosen = root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class RootPaths:
    """Every path under the root, so no other module builds them by hand."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def databases(self) -> Path:
        return self.root / "databases"

    @property
    def database(self) -> Path:
        return self.databases / "loraworks.sqlite"

    @property
    def install_lock(self) -> Path:
        return self.databases / "install.lock"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def autoimport(self) -> Path:
        return self.root / "autoimport"

    @property
    def autoimport_lora(self) -> Path:
        return self.autoimport / "lora"

    @property
    def autoimport_main(self) -> Path:
        return self.autoimport / "main"

    @property
    def autoimport_embedding(self) -> Path:
        return self.autoimport / "embedding"

    @property
    def autoimport_folders(self) -> list[Path]:
        """The drop folders, scanned at start-up and watched while the server runs."""
        return [self.autoimport_lora, self.autoimport_main, self.autoimport_embedding]

    @property
    def cache(self) -> Path:
        """Derived files (e.g. pipeline configs for single-file checkpoints); safe to delete."""
        return self.root / "cache"

    def in_autoimport(self, path: Path) -> bool:
        return path.is_relative_to(self.autoimport)

    def create(self) -> None:
        for folder in (
            self.databases,
            self.models,
            self.outputs,
            *self.autoimport_folders,
        ):
            folder.mkdir(parents=True, exist_ok=True)
