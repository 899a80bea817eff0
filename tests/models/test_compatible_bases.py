"""Records know every base a LoRA fits (the engine's `compatible_bases`) and its layer kinds,
the base filter of `list`/`get` uses the bases, and a database written before those columns
existed is migrated on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from loraworks.models import ModelError, ModelManager
from loraworks.models.database import SCHEMA_VERSION
from tests.models.lora_files import (
    kohya_clip_l_tensors,
    kohya_sd1_tensors,
    kohya_sdxl_tensors,
    write,
)

SDXL_META = {"ss_base_model_version": "sdxl_base_v1-0"}
LDM = "model.diffusion_model."


def _sd1_checkpoint(path: Path) -> Path:
    """What the probe reads of an SD1 single-file checkpoint: LDM keys, context width 768."""
    return write(
        path,
        {
            LDM + "input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
            LDM + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 768),
        },
    )


def _install_three(mm: ModelManager, folder: Path) -> None:
    """A CLIP-L-only LoRA tagged SDXL, an SDXL UNet-only LoRA and an SD1 LoRA."""
    unet_xl = {k: v for k, v in kohya_sdxl_tensors().items() if k.startswith("lora_unet_")}
    mm.install(write(folder / "clip-l.safetensors", kohya_clip_l_tensors(), SDXL_META))
    mm.install(write(folder / "unet-xl.safetensors", unet_xl, SDXL_META))
    mm.install(write(folder / "ink.safetensors", kohya_sd1_tensors()))


def _layers(record) -> int:
    """Modules with a `lora_down` in the file itself: what the record's kinds must count."""
    from safetensors import safe_open

    with safe_open(str(record.path), "pt") as f:
        return len({k.split(".")[0] for k in f.keys() if k.endswith("lora_down.weight")})  # noqa: SIM118


def test_records_count_the_layers_of_each_kind(mm, tmp_path):
    """A LoHa layer beside the LoRA ones (hand-made LyCORIS keys) is counted as its kind."""
    g = torch.Generator().manual_seed(0)
    hada = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    tensors = kohya_sd1_tensors()
    for leaf, shape in (("w1_a", (32, 2)), ("w1_b", (2, 32)), ("w2_a", (32, 2)), ("w2_b", (2, 32))):
        tensors[f"{hada}.hada_{leaf}"] = torch.randn(shape, generator=g) * 0.1
    record = mm.install(write(tmp_path / "mixed.safetensors", tensors))
    assert record.layer_kinds == {"lora": _layers(record), "loha": 1}
    assert mm.get("mixed").layer_kinds == record.layer_kinds  # stored, not just returned
    main = mm.install(_sd1_checkpoint(tmp_path / "tiny-main.safetensors"))
    assert main.layer_kinds == {}


def _lora_names(mm: ModelManager, base: str) -> set[str]:
    return {r.name for r in mm.list(type="lora", base=base)}


def _assert_listed_by_fit(mm: ModelManager, other_xl: frozenset[str] = frozenset()) -> None:
    assert _lora_names(mm, "sd1") == {"clip-l", "ink"}
    assert _lora_names(mm, "sdxl") == {"clip-l", "unet-xl", *other_xl}
    assert _lora_names(mm, "sd2") == set()
    clip_l = mm.get("clip-l", type="lora", base="sd1")
    assert (clip_l.base, clip_l.compatible_bases) == ("sdxl", ["sd1", "sdxl"])
    assert mm.get("unet-xl").compatible_bases == ["sdxl"]
    with pytest.raises(ModelError, match="no lora named 'unet-xl'"):
        mm.get("unet-xl", type="lora", base="sd1")


def test_list_and_get_filter_by_every_base_a_lora_fits(mm, tmp_path):
    _install_three(mm, tmp_path)
    _assert_listed_by_fit(mm)


def test_a_name_taken_for_two_bases_picks_the_one_probed_as_the_asked_base(mm, tmp_path):
    xl = mm.install(
        write(tmp_path / "a.safetensors", kohya_clip_l_tensors(), SDXL_META), name="twin"
    )
    sd1 = mm.install(write(tmp_path / "b.safetensors", kohya_sd1_tensors()), name="twin")
    assert mm.get("twin", type="lora", base="sd1").key == sd1.key  # both fit sd1
    assert mm.get("twin", type="lora", base="sdxl").key == xl.key
    with pytest.raises(ModelError, match="names several models"):
        mm.get("twin", type="lora")


def test_a_database_from_before_the_column_is_migrated_on_open(mm, tmp_path):
    _install_three(mm, tmp_path)
    gone = mm.install(write(tmp_path / "gone.safetensors", kohya_clip_l_tensors(seed=5), SDXL_META))
    mm.install(_sd1_checkpoint(tmp_path / "tiny-main.safetensors"))
    Path(gone.path).unlink()
    db = mm.paths.database
    mm.close()
    with sqlite3.connect(db) as c:  # back to the schema the previous code wrote
        c.execute("ALTER TABLE models DROP COLUMN compatible_bases")
        c.execute("ALTER TABLE models DROP COLUMN layer_kinds")
        c.execute("ALTER TABLE models DROP COLUMN base_evidence")
        c.execute("ALTER TABLE models DROP COLUMN warnings")
        c.execute("ALTER TABLE models DROP COLUMN vectors")
        c.execute("ALTER TABLE models DROP COLUMN bundled_embeddings")
        c.execute("ALTER TABLE models DROP COLUMN fewstep")
        c.execute("ALTER TABLE models DROP COLUMN fewstep_steps")
        c.execute("ALTER TABLE models DROP COLUMN hashes")
        c.execute("ALTER TABLE models ADD COLUMN is_lcm INTEGER NOT NULL DEFAULT 0")
        c.execute("UPDATE schema_version SET version = 1")
    c.close()

    reopened = ModelManager.open(mm.root)
    try:
        _assert_listed_by_fit(reopened, other_xl=frozenset({"gone"}))
        assert reopened.get("tiny-main").compatible_bases == ["sd1"]
        assert reopened.get("gone").compatible_bases == ["sdxl"]  # unreadable: its own base
        assert reopened.get("tiny-main").layer_kinds == {}
        loras = [r for r in reopened.list(type="lora") if r.name != "gone"]
        assert loras and all(r.layer_kinds == {"lora": _layers(r)} for r in loras)
        assert reopened.get("gone").layer_kinds == {}
        # the engine's base evidence and warnings, re-read from the files as well
        assert all(any("→" in line for line in r.base_evidence) for r in loras)
        assert reopened.get("gone").base_evidence == [] == reopened.get("tiny-main").warnings
    finally:
        reopened.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        left = c.execute(
            "SELECT COUNT(*) FROM models WHERE compatible_bases IS NULL OR layer_kinds IS NULL "
            "OR base_evidence IS NULL OR warnings IS NULL"
        )
        assert left.fetchone()[0] == 0
    c.close()


def test_cli_lists_a_clip_l_lora_for_sd1_with_its_probed_base(cli, tmp_path):
    cli("install", str(write(tmp_path / "clip-l.safetensors", kohya_clip_l_tensors(), SDXL_META)))
    assert [r["compatible_bases"] for r in cli.json("list", "--base", "sd1")] == [["sd1", "sdxl"]]
    assert "sdxl (+sd1)" in cli("list", "--base", "sd1").stdout
    n = len(kohya_clip_l_tensors()) // 3  # down, up, alpha per layer
    assert f"kohya (lora ×{n})" in cli("show", "clip-l").stdout
