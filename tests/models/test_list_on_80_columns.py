"""`loraworks models list` on an 80-column terminal: every line fits, an error's reason is one
line cut with an ellipsis (it once wrapped over a screenful), and `models show` prints it all."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from loraworks.cli import app
from loraworks.models import ModelManager
from tests.fixtures.models import build_pipeline
from tests.models.lora_files import (
    kohya_metadata,
    kohya_sd1_tensors,
    kohya_sdxl_tensors,
    write,
    write_lcm_folder,
)

REASON = (
    "broken.safetensors: 3 LoRA layer(s) do not fit the model:\n"
    "  unet.down_blocks.0.attentions.0.proj_in: shape (320, 4) vs (320, 320)\n"
    "  unet.mid_block.resnets.0.conv1: rank 0\n"
    "  … and 12 more"
)


@pytest.fixture
def short_root(tmp_path_factory) -> Path:
    """A main model, three LoRAs and an `error` record with a multi-line reason, scanned
    already (so the command prints no scan notices). The path is short: the summary line
    names the root."""
    root = tmp_path_factory.mktemp("r")
    work = tmp_path_factory.mktemp("work")
    build_pipeline("sd1", work / "parts").save_pretrained(work / "tiny-sd1")
    drop = root / "autoimport" / "lora"
    write(drop / "star.safetensors", kohya_sd1_tensors(), kohya_metadata({"zkstar": 10}))
    write(drop / "xl" / "detail-xl.safetensors", kohya_sdxl_tensors())
    write_lcm_folder(drop / "lcm-sd15")
    (drop / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    mm = ModelManager.open(root)
    mm.install(work / "tiny-sd1", name="tiny-sd1", type="main")
    broken = mm.db.model(mm.get("broken").key)
    with mm.db.transaction() as c:
        mm.db.upsert(c, broken.model_copy(update={"error": REASON}))
    mm.close()
    return root


def _run(root: Path, *args: str):
    result = CliRunner().invoke(app, ["models", *args, "--root", str(root)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_list_fits_80_columns_with_the_error_on_one_line(short_root):
    lines = _run(short_root, "list").splitlines()
    too_long = [line for line in lines if len(line) > 80]
    assert not too_long, "\n".join(too_long)
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and "broken" in errors[0].split(), errors
    assert "error: b" in errors[0] and "…" in errors[0]  # the reason's start, then cut
    # nothing of the reason's later lines (each names a `unet` layer), not even cut short
    assert not any("unet" in line or "12 more" in line for line in lines)
    for name in ("tiny-sd1", "star", "detail-xl", "lcm-sd15"):  # whole, not folded
        assert any(name in line.split() for line in lines), name


def test_show_prints_the_whole_error(short_root):
    shown = _run(short_root, "show", "broken")
    missing = [word for word in REASON.split() if word not in shown]
    assert not missing
