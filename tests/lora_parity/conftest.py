"""One folder and one registry of produced LoRA files for the whole parity suite, so the
base-detection tests reuse the files the parity tests already wrote."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lora_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora_parity")


@pytest.fixture(scope="session")
def produced_files() -> dict[tuple[str, str], Path]:
    """(factory name, base) -> the file or folder that factory wrote."""
    return {}
