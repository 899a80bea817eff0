"""`loraworks demo` end to end on the shipped weights: both install paths, every row draws.

Two denoising steps per picture: this shows the integration works, not the quality (that
is `bench/quality.py`'s job, with its numbers in docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from loraworks.demo.data import all_labels
from loraworks.demo.run import BASE_NAME, LCM_NAME, STAR_NAME, WEIGHTS, install_demo, rows, run_row
from loraworks.models import ModelManager

pytestmark = pytest.mark.skipif(
    not (WEIGHTS / BASE_NAME / "model_index.json").exists(), reason="demo weights not shipped"
)


def test_demo_installs_through_the_manager_and_every_row_draws(tmp_path):
    mm = ModelManager.open(tmp_path)
    install_demo(mm)
    base = mm.get(BASE_NAME, type="main")
    star = mm.get(STAR_NAME, type="lora")
    lcm = mm.get(LCM_NAME, type="lora")
    assert base.base == star.base == lcm.base == "sd1"
    assert star.trigger_words == ["zkstar"] and star.fewstep == "none"
    assert lcm.fewstep == "lcm"
    assert (mm.paths.autoimport_lora / f"{STAR_NAME}.safetensors").is_file()
    install_demo(mm)  # a second run installs nothing new
    assert len(mm.list()) == 3
    for row in rows():
        label = all_labels()[0] if not row.stars else all_labels(("star",))[0]
        result = run_row(mm, replace(row, steps=2), [label], [0])
        assert result.score.n == 1 and result.images[0].size == (64, 64)
    mm.close()
