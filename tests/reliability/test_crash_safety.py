"""SIGKILL during install, during the autoimport scan and during generation: on restart the
database opens, no record points at a missing or partial file, and (server) the interrupted
queue item is reported failed."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from loraworks.models import ModelManager
from loraworks.server.app import create_app
from tests.models.lora_files import kohya_sd1_tensors
from tests.reliability.crash import assert_consistent, kill, start, wait_for_line
from tests.reliability.root import MAIN, request
from tests.server.conftest import free_port

_INSTALL = """
import sys
from loraworks.models import ModelManager
mm = ModelManager.open(sys.argv[1])
print("ready", flush=True)
for source in sys.argv[2:]:
    mm.install(source)
print("done", flush=True)
"""

_SCAN = """
import sys
from loraworks.models import ModelManager
print("ready", flush=True)
ModelManager.open(sys.argv[1])
print("done", flush=True)
"""

_SERVE = """
import sys, uvicorn
from loraworks.models import ModelManager
from loraworks.server.app import create_app
app = create_app(ModelManager.open(sys.argv[1]))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def _big_lora(path: Path, rank: int) -> Path:
    """A valid SD1 LoRA of a few MB, so that an install takes long enough to be cut."""
    sd = kohya_sd1_tensors()
    key = "lora_te_text_model_encoder_layers_0_self_attn_k_proj"
    sd[f"{key}.lora_down.weight"] = torch.randn(rank, 768) * 0.01
    sd[f"{key}.lora_up.weight"] = torch.randn(768, rank) * 0.01
    save_file(sd, str(path))
    return path


def _fresh_root(tmp_path: Path, sd1_root: ModelManager) -> Path:
    """A new root with the tiny SD1 model (in place) and LoRA `k0` (copied)."""
    root = tmp_path / "root"
    mm = ModelManager.open(root, scan=False)
    mm.install(sd1_root.get(MAIN, type="main").path, name=MAIN, type="main", copy=False)
    mm.install(sd1_root.get("k0", type="lora").path, name="k0")
    mm.close()
    return root


@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_during_install(tmp_path):
    rng = random.Random("install")
    sources = [_big_lora(tmp_path / f"big{i}.safetensors", 1024 + i) for i in range(3)]
    root = tmp_path / "root"
    interrupted = 0
    for _ in range(2):
        proc = start(_INSTALL, str(root), *map(str, sources))
        wait_for_line(proc, "ready")
        time.sleep(rng.uniform(0.0, 1.5))
        interrupted += kill(proc)
        assert_consistent(root).close()
    assert interrupted >= 1, "every install finished before the kill; nothing was tested"
    mm = ModelManager.open(root)  # and the same files install cleanly afterwards
    assert {mm.install(s).key for s in sources} <= {r.key for r in mm.list()}
    mm.close()


@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_during_autoimport_scan(tmp_path):
    rng = random.Random("scan")
    root = tmp_path / "root"
    ModelManager.open(root).close()
    drop = root / "autoimport" / "lora"
    for i in range(40):
        save_file(kohya_sd1_tensors(seed=i), str(drop / f"lora{i:02d}.safetensors"))
    (drop / "broken.safetensors").write_bytes(b"\x10\x00\x00")
    interrupted = 0
    for _ in range(2):
        proc = start(_SCAN, str(root))
        wait_for_line(proc, "ready")
        time.sleep(rng.uniform(0.2, 2.0))
        interrupted += kill(proc)
        assert_consistent(root).close()
    assert interrupted >= 1, "every scan finished before the kill; nothing was tested"
    mm = assert_consistent(root)
    assert len(mm.list(type="lora", status="ok")) == 40
    assert mm.get("broken").status == "error"
    mm.close()


@pytest.mark.timeout(300)
def test_sigkill_during_generation_in_the_server(tmp_path, sd1_root):
    """Killed mid-generation: no image record, a consistent root, and after a restart the
    interrupted queue item is reported failed."""
    root = _fresh_root(tmp_path, sd1_root)
    port = free_port()
    proc = start(_SERVE, str(root), str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        item_id = _running_item(url)
    finally:
        kill(proc)
    mm = assert_consistent(root)
    assert mm.images.count() == 0
    with TestClient(create_app(mm, start_worker=False)) as client:
        response = client.get(f"/api/queue/{item_id}")
    mm.close()
    assert response.status_code == 200, "the interrupted item is gone after the restart"
    assert response.json()["status"] == "failed"


def _running_item(url: str) -> str:
    """Enqueue a long generation and wait until it has made a step."""
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:
            try:
                client.get("/api/models")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server never started"
                time.sleep(0.2)
        body = request([("k0", 0.8)], steps=200).model_dump(mode="json")
        item_id = client.post("/api/queue", json=body).json()["id"]
        while client.get(f"/api/queue/{item_id}").json()["step"] < 1:
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.1)
    return item_id
