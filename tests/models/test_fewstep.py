"""A LoRA's few-step family (#18) from the names publishers use, metadata before the name
before the LCM layout, `models edit --fewstep`, lists, and the migration from `is_lcm`."""

from __future__ import annotations

import sqlite3

import pytest

from loraworks.models import ModelManager
from loraworks.models.fewstep import detect_fewstep
from tests.models.lora_files import kohya_sd1_tensors, lcm_sd1_tensors, write

RESNET = "unet.down_blocks.0.resnets.0"
ATTN = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
LCM_LAYOUT = [f"{RESNET}.conv1", f"{RESNET}.time_emb_proj", f"{ATTN}.attn1.to_q"]
CONCEPT = [f"{ATTN}.attn1.to_q", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]


@pytest.mark.parametrize(
    ("name", "family", "steps"),
    [
        # file names as the publishers ship them
        ("sdxl_lightning_4step_lora", "lightning", 4),
        ("sdxl_lightning_8step_lora", "lightning", 8),
        ("Hyper-SD15-8steps-lora", "hyper", 8),
        ("Hyper-SDXL-1step-lora", "hyper", 1),
        ("Hyper-SD15-12steps-CFG-lora", "hyper", 12),
        ("TCD-SD15-LoRA", "tcd", None),
        ("tcd-sdxl", "tcd", None),
        ("pcm_sdxl_smallcfg_4step", "pcm", 4),
        ("pcm_sd15_normalcfg_16step_converted", "pcm", 16),
        ("lcm-lora-sdv1-5", "lcm", None),
        ("LCM_LoRA_SDXL", "lcm", None),
        # words inside other words are not families
        ("tcdemo", "none", None),
        ("hyperreal_style", "none", None),
        ("calcmagic", "none", None),
        ("style_4steps", "none", None),
    ],
)
def test_family_and_steps_from_published_names(name, family, steps):
    found = detect_fewstep(CONCEPT, {}, name)
    assert (found.family, found.steps) == (family, steps)


def test_the_name_beats_the_lcm_layout():
    assert detect_fewstep(LCM_LAYOUT, {}, "Hyper-SD15-8steps-lora").family == "hyper"
    assert detect_fewstep(LCM_LAYOUT, {}, "pytorch_lora_weights").family == "lcm"


def test_metadata_beats_the_name_and_keeps_the_names_steps():
    meta = {"modelspec.title": "SDXL-Lightning"}
    found = detect_fewstep(CONCEPT, meta, "my_lcm_8step")
    assert (found.family, found.steps) == ("lightning", 8)
    meta = {"modelspec.description": "Trajectory Consistency Distillation, 2 steps"}
    assert detect_fewstep(CONCEPT, meta, "x").steps == 2


def test_install_records_the_family_and_edit_changes_it(cli, tmp_path):
    write(tmp_path / "sdxl_lightning_2step_lora.safetensors", kohya_sd1_tensors())
    record = cli.json("install", str(tmp_path / "sdxl_lightning_2step_lora.safetensors"))
    assert (record["fewstep"], record["fewstep_steps"]) == ("lightning", 2)
    listed = cli("list", "--type", "lora").stdout
    assert "lightning 2-step" in listed
    edited = cli.json("edit", record["key"], "--fewstep", "pcm")
    assert edited["fewstep"] == "pcm"
    bad = cli("edit", record["key"], "--fewstep", "turbo", code=2)
    assert "turbo" in bad.output


def test_migration_6_turns_is_lcm_into_fewstep(root, tmp_path):
    mm = ModelManager.open(root)
    lcm = mm.install(write(tmp_path / "pytorch_lora_weights.safetensors", lcm_sd1_tensors()))
    plain = mm.install(write(tmp_path / "ink.safetensors", kohya_sd1_tensors(seed=3)))
    db = mm.paths.database
    mm.close()
    with sqlite3.connect(db) as c:  # the schema before migration 6 (and what came after it)
        version = c.execute("SELECT version FROM schema_version").fetchone()[0]
        columns = {row[1] for row in c.execute("PRAGMA table_info(models)")}
        c.execute("ALTER TABLE models DROP COLUMN fewstep")
        c.execute("ALTER TABLE models DROP COLUMN fewstep_steps")
        c.execute("ALTER TABLE models ADD COLUMN is_lcm INTEGER NOT NULL DEFAULT 0")
        c.execute("UPDATE models SET is_lcm = 1 WHERE key = ?", (lcm.key,))
        if version > 6:  # later migrations' columns go as well, so that they run again
            added = {"hashes"} & columns
            for column in added:
                c.execute(f"ALTER TABLE models DROP COLUMN {column}")
        c.execute("UPDATE schema_version SET version = 5")
    c.close()
    reopened = ModelManager.open(root)
    try:
        assert reopened.get(lcm.key).fewstep == "lcm"
        assert reopened.get(plain.key).fewstep == "none"
    finally:
        reopened.close()
    with sqlite3.connect(db) as c:
        assert "is_lcm" not in {row[1] for row in c.execute("PRAGMA table_info(models)")}
    c.close()
