"""Root layout, config, schema versioning, names, removal and the gallery."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraworks.models import ImageNotFound, ModelError, ModelManager
from loraworks.models.config import Config
from loraworks.models.database import SCHEMA_VERSION
from loraworks.models.names import sanitize_name, unique_name
from tests.models.lora_files import kohya_sd1_tensors, write


def test_open_creates_layout_and_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAWORKS_ROOT", str(tmp_path / "from-env"))
    mm = ModelManager.open()
    assert mm.root == tmp_path / "from-env"
    for sub in ("databases", "models", "outputs", "autoimport/lora", "autoimport/main"):
        assert (mm.root / sub).is_dir()
    assert (mm.root / "config.toml").is_file()
    assert mm.config == Config()
    assert mm.paths.autoimport_lora == mm.root / "autoimport" / "lora"
    assert ModelManager.open(tmp_path / "arg").root == tmp_path / "arg"


def test_bad_config_is_a_clear_error(root):
    root.mkdir()
    (root / "config.toml").write_text("[generation]\nstepz = 3\n")
    expected = r"config\.toml: invalid configuration \(generation\.stepz: extra inputs"
    with pytest.raises(ModelError, match=expected):
        ModelManager.open(root)


def test_schema_version_recorded_and_newer_refused(mm):
    db = mm.paths.database
    mm.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        c.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(ModelError, match="newer than this loraworks"):
        ModelManager.open(mm.root)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd", "passwd"),
        ("a/b\\c", "c"),
        ("..", "model"),
        ("My LoRA v2", "My LoRA v2"),
        ("x\x00y<>|z", "x-y-z"),
        (".hidden", "hidden"),
    ],
)
def test_sanitize_name(raw, clean):
    assert sanitize_name(raw) == clean


def test_unique_name_suffixes():
    assert unique_name("a", {"A", "a-2"}) == "a-3"
    assert unique_name("b", {"a"}) == "b"


def test_rename_clash_refused_and_removal_of_drop_file(mm):
    write(mm.paths.autoimport_lora / "one.safetensors", kohya_sd1_tensors())
    write(mm.paths.autoimport_lora / "two.safetensors", kohya_sd1_tensors(seed=4))
    mm.scan()
    with pytest.raises(ModelError, match="named 'one' exists"):
        mm.update(mm.get("two").key, name="one")
    mm.remove(mm.get("one").key)
    assert not (mm.paths.autoimport_lora / "one.safetensors").exists()
    mm.scan()
    assert [r.name for r in mm.list()] == ["two"]


def test_gallery_newest_first(mm):
    paths = []
    for i in range(3):
        p = mm.paths.outputs / f"{i}.png"
        p.write_bytes(b"png")
        paths.append(p)
        mm.images.add(p, {"seed": i})
    listed = mm.images.list(offset=0, limit=2)
    assert [im.recipe["seed"] for im in listed] == [2, 1]
    assert [im.recipe["seed"] for im in mm.images.list(offset=2, limit=2)] == [0]
    first = mm.images.list(offset=2, limit=1)[0]
    assert mm.images.get(first.id).path == paths[0]
    mm.images.delete(first.id)
    assert not paths[0].exists()
    assert mm.images.count() == 2
    with pytest.raises(ImageNotFound):
        mm.images.get(first.id)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=200))
def test_sanitized_names_never_leave_their_folder(raw):
    from pathlib import PurePosixPath

    name = sanitize_name(raw)
    assert name and len(name) <= 100
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in {".", ".."} and not name.startswith(".")
    assert PurePosixPath("/models", name).parent == PurePosixPath("/models")
