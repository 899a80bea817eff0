"""Shared pytest fixtures: tiny-but-true SD1/SD2/SDXL models (see tests/fixtures/models.py)."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.models import BASES, Components, build_components

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(params=BASES)
def base(request) -> str:
    return request.param


@pytest.fixture
def tiny(base) -> Components:
    """Fresh tiny components for `base` (tests may patch them freely)."""
    return build_components(base, "tiny")
