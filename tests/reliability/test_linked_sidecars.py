"""Sidecars that are links to files outside the model's folder (`x.txt → secret`,
`x.png → /etc/passwd`, `x.json`, `x.txt → /proc/self/environ`) are never read into a record,
served as a preview or copied into `models/`; a FIFO sidecar does not block the scan. A link
*to* a LoRA file in the drop folder still installs, and only its own file is read. Before, the
secret came back as the description, the preview route served it and installs copied it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loraworks.models import ModelManager
from loraworks.server.app import create_app
from tests.models.lora_files import kohya_sd1_tensors, write
from tests.server.conftest import LOCAL_URL

SECRET = "TOP-SECRET-sidecar-target"
PNG = b"\x89PNG\r\n\x1a\n" + SECRET.encode()


def _secrets(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        ".txt": folder / "secret.txt",
        ".png": folder / "secret.png",
        ".json": folder / "secret.json",
    }
    files[".txt"].write_text(SECRET)
    files[".png"].write_bytes(PNG)
    files[".json"].write_text(f'{{"activation text": "{SECRET}", "description": "{SECRET}"}}')
    return files


def _link_sidecars(model: Path, targets: dict[str, Path]) -> None:
    for suffix, target in targets.items():
        model.with_suffix(suffix).symlink_to(target)


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[TestClient, ModelManager]]:
    mm = ModelManager.open(tmp_path / "root", scan=False)
    with TestClient(create_app(mm, start_worker=False), base_url=LOCAL_URL) as client:
        yield client, mm
    mm.close()


def _assert_nothing_leaked(client: TestClient, mm: ModelManager, key: str) -> None:
    record = client.get(f"/api/models/{key}").json()
    assert SECRET not in str(record)
    assert record["preview_url"] is None
    assert client.get(f"/api/models/{key}/preview").status_code == 404
    for copied in mm.paths.models.rglob("*"):
        assert not copied.is_file() or SECRET.encode() not in copied.read_bytes(), copied


def test_linked_sidecars_in_the_drop_folder_are_not_read_or_served(api, tmp_path):
    client, mm = api
    model = write(mm.paths.autoimport_lora / "x.safetensors", kohya_sd1_tensors(1))
    _link_sidecars(model, _secrets(tmp_path / "elsewhere"))
    mm.scan()
    _assert_nothing_leaked(client, mm, mm.get("x").key)


def test_linked_sidecars_are_not_copied_by_an_install(api, tmp_path):
    client, mm = api
    model = write(tmp_path / "src" / "y.safetensors", kohya_sd1_tensors(2))
    _link_sidecars(model, _secrets(tmp_path / "elsewhere"))
    answer = client.post("/api/models/install", json={"source": str(model)})
    assert answer.status_code == 201, answer.text
    _assert_nothing_leaked(client, mm, answer.json()["key"])


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="needs /proc")
def test_a_sidecar_linked_to_proc_environ_is_not_read(api):
    """Size 0 on disk, the server's environment when read."""
    client, mm = api
    model = write(mm.paths.autoimport_lora / "p.safetensors", kohya_sd1_tensors(3))
    model.with_suffix(".txt").symlink_to("/proc/self/environ")
    mm.scan()
    assert mm.get("p").description == ""  # the environment (PATH=...) before
    _assert_nothing_leaked(client, mm, mm.get("p").key)


def test_a_fifo_sidecar_does_not_block_the_scan(api):
    _, mm = api
    model = write(mm.paths.autoimport_lora / "f.safetensors", kohya_sd1_tensors(4))
    os.mkfifo(model.with_suffix(".txt"))
    os.mkfifo(model.with_suffix(".json"))
    scan = threading.Thread(target=mm.scan, daemon=True)
    scan.start()
    scan.join(60)  # a hang guard only
    assert not scan.is_alive(), "the scan blocked on a FIFO sidecar"
    assert mm.get("f").status == "ok"


def test_a_link_to_a_lora_file_still_installs_reading_only_that_file(api, tmp_path):
    _, mm = api
    elsewhere = tmp_path / "elsewhere"
    target = write(elsewhere / "z.safetensors", kohya_sd1_tensors(5))
    (elsewhere / "z.txt").write_text(SECRET)
    (mm.paths.autoimport_lora / "z.safetensors").symlink_to(target)
    mm.scan()
    record = mm.get("z")
    assert record.status == "ok" and SECRET not in record.description


def test_a_link_to_a_picture_in_the_same_folder_is_a_preview(api):
    client, mm = api
    model = write(mm.paths.autoimport_lora / "w.safetensors", kohya_sd1_tensors(6))
    (model.parent / "w-picture.png").write_bytes(b"\x89PNG\r\n\x1a\nown picture")
    model.with_suffix(".png").symlink_to("w-picture.png")
    mm.scan()
    record = client.get(f"/api/models/{mm.get('w').key}").json()
    assert client.get(record["preview_url"]).content.endswith(b"own picture")
