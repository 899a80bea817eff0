"""Trigger words, preferred weight, description and preview from real-layout metadata."""

from __future__ import annotations

import json
import os

from loraworks.models import ModelManager
from loraworks.models.metadata import triggers_from_tag_frequency
from tests.models.lora_files import kohya_metadata, kohya_sd1_tensors, write


def test_kohya_tag_frequency_gives_the_tags_on_every_image(root):
    # 10 images, all captioned with the trigger; other tags on some images only
    tags = {"zkstar": 10, "blue": 4, "star": 6, "black background": 5}
    write(root / "autoimport/lora/star.safetensors", kohya_sd1_tensors(), kohya_metadata(tags))
    mm = ModelManager.open(root)
    record = mm.get("star")
    assert record.trigger_words == ["zkstar"]
    # training facts kept raw
    assert record.metadata["ss_network_dim"] == "4"
    assert json.loads(record.metadata["ss_tag_frequency"]) == {"10_zkstar": tags}


def test_tag_frequency_sums_datasets_and_keeps_ties():
    raw = json.dumps({"5_a": {"owl": 5, "cat": 2}, "3_b": {"owl": 3, "zk": 8}})
    assert triggers_from_tag_frequency(raw) == ["owl", "zk"]
    assert triggers_from_tag_frequency("not json") == []


def test_modelspec_trigger_phrase(root):
    meta = {"modelspec.trigger_phrase": "zkstar, glowing star", "modelspec.title": "Stars"}
    write(root / "autoimport/lora/spec.safetensors", kohya_sd1_tensors(), meta)
    record = ModelManager.open(root).get("spec")
    assert record.trigger_words == ["zkstar", "glowing star"]


def test_a1111_sidecars_win_and_give_weight_description_preview(root):
    folder = root / "autoimport/lora"
    write(folder / "owl.safetensors", kohya_sd1_tensors(), kohya_metadata({"bird": 3}))
    sidecar = {
        "description": "Owls at night",
        "sd version": "SD1",
        "activation text": "owlz, night owl",
        "preferred weight": 0.6,
        "notes": "",
    }
    (folder / "owl.json").write_text(json.dumps(sidecar))
    (folder / "owl.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    record = ModelManager.open(root).get("owl")
    assert record.trigger_words == ["owlz", "night owl"]
    assert record.default_weight == 0.6
    assert record.description == "Owls at night"
    assert record.preview_path == folder / "owl.preview.png"


def test_txt_sidecar_is_the_description_and_zero_weight_means_unset(root):
    folder = root / "autoimport/lora"
    write(folder / "fox.safetensors", kohya_sd1_tensors())
    (folder / "fox.txt").write_text("A red fox.\n")
    (folder / "fox.json").write_text(json.dumps({"preferred weight": 0, "activation text": ""}))
    (folder / "fox.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    record = ModelManager.open(root).get("fox")
    assert (record.description, record.default_weight, record.trigger_words) == (
        "A red fox.",
        None,
        [],
    )
    assert record.preview_path == folder / "fox.png"


def test_user_edits_survive_rescans(root):
    folder = root / "autoimport/lora"
    path = write(folder / "star.safetensors", kohya_sd1_tensors(), kohya_metadata({"zk": 2}))
    mm = ModelManager.open(root)
    key = mm.get("star").key
    mm.update(key, name="My Star", trigger_words=["mine"], default_weight=0.9)
    # the provider ships a new version with other metadata and a sidecar
    write(path, kohya_sd1_tensors(seed=3), kohya_metadata({"zk2": 2}))
    os.utime(path, ns=(1, 1))
    (folder / "star.json").write_text(json.dumps({"description": "new text"}))
    report = mm.scan()
    assert [r.key for r in report.updated] == [key]
    record = mm.get(key)
    assert (record.name, record.trigger_words, record.default_weight) == ("My Star", ["mine"], 0.9)
    assert record.description == "new text"  # not edited by the user: follows the files
    assert json.loads(record.metadata["ss_tag_frequency"]) == {"10_zkstar": {"zk2": 2}}
