"""Tiny SD1/SD2/SDXL pipelines shared by the generation tests (built once per session; tests
that patch weights restore them, and the weight-identity tests check exactly that)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.models import BASES, build_pipeline

SIZE = 64


@pytest.fixture(scope="session")
def pipes(tmp_path_factory) -> dict:
    root: Path = tmp_path_factory.mktemp("pipes")
    return {base: build_pipeline(base, root / base) for base in BASES}


@pytest.fixture(scope="session")
def mm(tmp_path_factory):
    """A models root with tiny SD1/SD2/SDXL main models and four LoRAs per base."""
    from tests.generation.loras import build_root

    manager = build_root(tmp_path_factory.mktemp("root"), tmp_path_factory.mktemp("work"))
    yield manager
    manager.close()
