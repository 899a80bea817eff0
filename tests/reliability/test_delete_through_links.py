"""Deleting a drop-folder model never deletes anything outside the models root: links in
`autoimport/` (which the docs allow) are followed to import, but a delete removes at most the
link. Before, `DELETE /api/models/{key}` deleted a file reached through a linked folder and
`rmtree`d a linked diffusers folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loraworks.models import ModelManager
from loraworks.server.app import create_app
from tests.models.lora_files import kohya_sd1_tensors, write
from tests.server.conftest import LOCAL_URL


def _pipeline_folder(folder: Path) -> Path:
    """Enough of a diffusers SD1 folder to be probed (configs and one weight file)."""
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (folder / "unet" / "config.json").write_text(
        json.dumps({"in_channels": 4, "cross_attention_dim": 768})
    )
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(folder.name.encode())
    return folder


@pytest.fixture
def linked(tmp_path) -> Iterator[tuple[TestClient, ModelManager, Path]]:
    """A root whose drop folders hold links to `elsewhere/`, outside the root."""
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "lora-dir" / "a.safetensors", kohya_sd1_tensors(1))
    write(elsewhere / "b.safetensors", kohya_sd1_tensors(2))
    _pipeline_folder(elsewhere / "main-dir" / "pipe")
    _pipeline_folder(elsewhere / "pipe2")
    root = tmp_path / "root"
    (root / "autoimport" / "lora").mkdir(parents=True)
    (root / "autoimport" / "main").mkdir(parents=True)
    (root / "autoimport" / "lora" / "linked").symlink_to(elsewhere / "lora-dir")
    (root / "autoimport" / "lora" / "b.safetensors").symlink_to(elsewhere / "b.safetensors")
    (root / "autoimport" / "main" / "linked").symlink_to(elsewhere / "main-dir")
    (root / "autoimport" / "main" / "pipe2").symlink_to(elsewhere / "pipe2")
    mm = ModelManager.open(root)
    with TestClient(create_app(mm, start_worker=False), base_url=LOCAL_URL) as client:
        yield client, mm, elsewhere
    mm.close()


def _delete(client: TestClient, mm: ModelManager, name: str) -> None:
    record = mm.get(name)
    assert record.status == "ok", record.error
    answer = client.delete(f"/api/models/{record.key}")
    assert answer.status_code == 200, answer.text
    assert record.key not in {r.key for r in mm.list()}


def test_delete_through_a_linked_folder_keeps_the_file_outside(linked):
    client, mm, elsewhere = linked
    _delete(client, mm, "a")
    assert (elsewhere / "lora-dir" / "a.safetensors").is_file()


def test_delete_of_a_pipeline_in_a_linked_folder_keeps_it(linked):
    client, mm, elsewhere = linked
    _delete(client, mm, "pipe")
    assert (elsewhere / "main-dir" / "pipe" / "unet" / "config.json").is_file()


def test_delete_of_a_linked_file_or_folder_removes_only_the_link(linked):
    client, mm, elsewhere = linked
    _delete(client, mm, "b")
    _delete(client, mm, "pipe2")
    assert (elsewhere / "b.safetensors").is_file()
    assert (elsewhere / "pipe2" / "model_index.json").is_file()
    drop = mm.paths.autoimport
    assert not (drop / "lora" / "b.safetensors").is_symlink()
    assert not (drop / "main" / "pipe2").is_symlink()


def test_delete_of_a_real_drop_folder_file_still_deletes_it(linked):
    client, mm, _ = linked
    own = write(mm.paths.autoimport_lora / "own.safetensors", kohya_sd1_tensors(3))
    mm.scan()
    _delete(client, mm, "own")
    assert not own.exists()
