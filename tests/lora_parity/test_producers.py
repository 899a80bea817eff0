"""The fixtures themselves: hand-made kohya files mean what the kohya formula says, as
diffusers reads them (this also checks our sgm names against diffusers' own mapping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.models import BASES
from tests.lora_parity import producers as P
from tests.lora_parity.inputs import forward_all, relative_errors


@pytest.mark.parametrize(
    "base",
    [pytest.param(b, marks=() if b == "sdxl" else pytest.mark.slow) for b in BASES],
)
def test_hand_kohya_file_matches_diffusers(base: str, lora_folder: Path):
    produced = P.kohya_hand_file(base, "kohya_locon", lora_folder)
    unpatched = forward_all(P.fresh(base).as_mapping())
    for weight in (1.0, -1.0):
        hand = produced.notes["hand_reference"](weight)
        errors = relative_errors(hand, produced.reference(weight), unpatched)
        assert errors.keys() == set(produced.targets)
        assert max(errors.values()) < 1e-4, errors
