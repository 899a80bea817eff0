"""Embedding records: every producer layout installed with the base its widths say, the drop
folder at start-up and live, bundled embeddings listed with their LoRA, `models list --type
embedding` with triggers, trigger edits kept, migration 5, bad files refused leaving nothing."""

from __future__ import annotations

import json
import pickle
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch

from loraworks.models import ModelError, ModelManager
from loraworks.models.database import SCHEMA_VERSION
from tests.embeddings.producers import add_bundle, write_a1111, write_diffusers, write_kohya
from tests.models.conftest import Cli
from tests.models.lora_files import kohya_sd1_tensors, write

WIDTH = {"sd1": 768, "sd2": 1024, "clip_g": 1280}


def _vectors(n: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def mm(tmp_path):
    manager = ModelManager.open(tmp_path / "root")
    yield manager
    manager.close()


# name → (writer, base, format, vectors, compatible bases); widths decide, names never do
LAYOUTS = {
    "a1111-sd1": (lambda p: write_a1111(p.with_suffix(".pt"), _vectors(3, 768)), "sd1", "a1111"),
    "a1111-sd2": (lambda p: write_a1111(p.with_suffix(".pt"), _vectors(2, 1024)), "sd2", "a1111"),
    "kohya-sd1": (
        lambda p: write_kohya(p.with_suffix(".safetensors"), _vectors(2, 768)),
        "sd1",
        "kohya",
    ),
    "kohya-sdxl": (
        lambda p: write_kohya(
            p.with_suffix(".safetensors"), {"clip_l": _vectors(4, 768), "clip_g": _vectors(4, 1280)}
        ),
        "sdxl",
        "sdxl",
    ),
    "diffusers": (
        lambda p: write_diffusers(p / "learned_embeds.safetensors", "<cat-toy>", _vectors(1, 768)),
        "sd1",
        "diffusers",
    ),
    "diffusers-bin-1d": (
        lambda p: write_diffusers(p.with_suffix(".bin"), "<x>", _vectors(1, 1024)[0]),
        "sd2",
        "diffusers",
    ),
}
COUNTS = {"a1111-sd1": 3, "a1111-sd2": 2, "kohya-sd1": 2, "kohya-sdxl": 4}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_producer_layout_installs_as_an_embedding(mm, tmp_path, layout):
    writer, base, fmt = LAYOUTS[layout]
    source = writer(tmp_path / "files" / f"sdxl-{layout}")  # a misleading name: widths decide
    record = mm.install(source)
    assert (record.type, record.base, record.format) == ("embedding", base, fmt)
    assert record.vectors == COUNTS.get(layout, 1)
    assert record.compatible_bases == (["sd1", "sdxl"] if base == "sd1" else [base])
    assert record.trigger_words == [f"sdxl-{layout}"]  # the stem; a diffusers folder's name
    assert record.hash and record.path.is_file()


def test_drop_folder_at_start_and_live(tmp_path):
    root = tmp_path / "root"
    drop = root / "autoimport" / "embedding"
    drop.mkdir(parents=True)
    write_a1111(drop / "bad hands.pt", _vectors(2, 768))
    mm = ModelManager.open(root)
    stop, seen = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=mm.watch, args=(stop,), kwargs={"on_scan": lambda r: seen.set()}
    )
    try:
        record = mm.get("bad hands", type="embedding")
        assert (record.base, record.trigger_words, record.in_place) == ("sd1", ["bad hands"], True)
        thread.start()
        time.sleep(0.5)  # let the watcher start before the drop
        write_kohya(
            drop / "neg-xl.safetensors", {"clip_l": _vectors(1, 768), "clip_g": _vectors(1, 1280)}
        )
        assert seen.wait(30), "no rescan after an embedding was dropped"
        assert mm.get("neg-xl", type="embedding").base == "sdxl"
    finally:
        stop.set()
        thread.join(10)
        mm.close()


def test_a_file_in_the_wrong_drop_folder_is_an_error_record_saying_where(tmp_path):
    root = tmp_path / "root"
    write_a1111(root / "autoimport" / "lora" / "emb.pt", _vectors(1, 768))
    write(root / "autoimport" / "embedding" / "lora.safetensors", kohya_sd1_tensors())
    mm = ModelManager.open(root)
    try:
        emb, lora = mm.get("emb"), mm.get("lora")
        assert emb.status == "error" and "autoimport/embedding" in emb.error
        assert lora.status == "error" and "not a textual-inversion embedding" in lora.error
    finally:
        mm.close()


def test_a_loras_bundled_embeddings_are_listed_with_it(mm, tmp_path):
    lora = write(tmp_path / "with-emb.safetensors", kohya_sd1_tensors())
    add_bundle(lora, "zkface", {"string_to_param.*": _vectors(2, 768)})
    record = mm.install(lora)
    assert record.type == "lora"
    assert [(e.name, e.base, e.vectors) for e in record.bundled_embeddings] == [
        ("zkface", "sd1", 2)
    ]
    assert record.layer_kinds == {"lora": 4}  # bundle_emb keys are not layers
    out = Cli(mm.root)("list", "--type", "lora").stdout
    assert "embedding zkface" in out


def test_list_shows_triggers_and_an_edited_trigger_survives_a_rescan(mm, tmp_path):
    drop = mm.paths.autoimport_embedding
    write_a1111(drop / "easyneg.pt", _vectors(8, 768))
    mm.scan()
    cli = Cli(mm.root)
    rows = cli.json("list", "--type", "embedding")
    assert [(r["name"], r["trigger_words"], r["vectors"]) for r in rows] == [
        ("easyneg", ["easyneg"], 8)
    ]
    cli("edit", "easyneg", "--triggers", "easy negative, en")
    write_a1111(drop / "easyneg.pt", _vectors(8, 768, seed=1))  # retrained: rescanned
    mm.scan()
    assert mm.get("easyneg").trigger_words == ["easy negative", "en"]
    table = cli("list", "--type", "embedding").stdout
    assert "easy negative, en" in table and "8 vectors" in table


def test_migration_5_lists_the_bundles_of_loras_recorded_before(mm, tmp_path):
    lora = add_bundle(
        write(tmp_path / "old.safetensors", kohya_sd1_tensors()),
        "zk",
        {"string_to_param.*": _vectors(1, 768)},
    )
    mm.install(lora)
    db, root = mm.paths.database, mm.root
    mm.close()
    with sqlite3.connect(db) as c:  # the schema before embeddings
        c.execute("ALTER TABLE models DROP COLUMN vectors")
        c.execute("ALTER TABLE models DROP COLUMN bundled_embeddings")
        c.execute("ALTER TABLE models DROP COLUMN fewstep")  # and migration 6's
        c.execute("ALTER TABLE models DROP COLUMN fewstep_steps")
        c.execute("ALTER TABLE models DROP COLUMN hashes")  # and migration 7's
        c.execute("ALTER TABLE models ADD COLUMN is_lcm INTEGER NOT NULL DEFAULT 0")
        c.execute("UPDATE schema_version SET version = 4")
    c.close()
    reopened = ModelManager.open(root)
    try:
        assert [e.name for e in reopened.get("old").bundled_embeddings] == ["zk"]
    finally:
        reopened.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        stored = c.execute("SELECT bundled_embeddings FROM models").fetchone()[0]
        assert json.loads(stored)[0]["name"] == "zk"
    c.close()


class _Code:
    """Unpickling this runs `Path.touch` on a marker: a weights-only reader must not."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_files(folder: Path, marker: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    truncated = write_kohya(folder / "truncated.safetensors", _vectors(4, 768))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    code = folder / "code.pt"
    with code.open("wb") as f:
        pickle.dump({"string_to_param": {"*": _Code(marker)}}, f)
    return {
        "zero": write_kohya(folder / "zero.safetensors", torch.zeros(0, 768)),
        "nan": write_a1111(folder / "nan.pt", torch.full((2, 768), float("nan"))),
        "inf": write_kohya(folder / "inf.safetensors", torch.full((1, 1024), float("inf"))),
        "width": write_kohya(folder / "width.safetensors", _vectors(2, 999)),
        "sdxl-halves": write_kohya(
            folder / "halves.safetensors", {"clip_l": _vectors(2, 768), "clip_g": _vectors(3, 1280)}
        ),
        "truncated": truncated,
        "code": code,
    }


WHY = {
    "zero": "none is not one",
    "nan": "NaN or infinity",
    "inf": "NaN or infinity",
    "width": "999 wide, which matches no",
    "sdxl-halves": "different numbers of vectors",
    "truncated": "truncated.safetensors",
    "code": "refused to load this pickle",
}


@pytest.mark.parametrize("case", WHY)
def test_bad_files_are_refused_with_the_reason_and_leave_nothing(mm, tmp_path, case):
    marker = tmp_path / "ran"
    source = _bad_files(tmp_path / "bad", marker)[case]
    with pytest.raises(ModelError, match=WHY[case]):
        mm.install(source, type="embedding")
    assert mm.list() == [] and list(mm.paths.models.iterdir()) == []
    assert not marker.exists()  # the pickle's code never ran
