"""SIGKILL during install, during the autoimport scan and during generation: on restart the
database opens, no record points at a missing or partial file, and (server) the interrupted
queue item is reported failed."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from loraworks.models import ModelManager
from loraworks.models.config import Limits
from loraworks.server.app import create_app
from tests.models.lora_files import kohya_sd1_tensors
from tests.reliability.crash import assert_consistent, kill, start, wait_for_line
from tests.reliability.root import MAIN, request
from tests.server.conftest import LOCAL_URL, free_port

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
        time.sleep(rng.uniform(0.0, 0.3))  # installs take longer than this even when quiet
        interrupted += kill(proc)
        assert_consistent(root).close()
    assert interrupted >= 1, "every install finished before the kill; nothing was tested"
    mm = ModelManager.open(root)  # and the same files install cleanly afterwards
    assert {mm.install(s).key for s in sources} <= {r.key for r in mm.list()}
    mm.close()


def _record_count(root: Path) -> int:
    """Model records committed so far (read-only; a busy database reads as "not yet")."""
    db = root / "databases" / "loraworks.sqlite"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return con.execute("SELECT COUNT(*) FROM models").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return -1


def _wait_for_records(root: Path, target: int, proc, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while _record_count(root) < target:
        assert proc.poll() is None, "the scan ended before the planned kill"
        assert time.monotonic() < deadline, "the scan made no progress"
        time.sleep(0.001)


@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_during_autoimport_scan(tmp_path):
    rng = random.Random("scan")
    root = tmp_path / "root"
    ModelManager.open(root).close()
    drop = root / "autoimport" / "lora"
    (drop / "broken.safetensors").write_bytes(b"\x10\x00\x00")
    interrupted = 0
    for round_ in range(2):
        # new files each round: reopening the root below finishes the interrupted scan
        for i in range(20):
            seed = 20 * round_ + i
            save_file(kohya_sd1_tensors(seed=seed), str(drop / f"lora{seed:02d}.safetensors"))
        proc = start(_SCAN, str(root))
        wait_for_line(proc, "ready")
        # kill after a random number of new records: mid-scan whatever the machine's speed
        _wait_for_records(root, _record_count(root) + rng.randint(1, 15), proc)
        interrupted += kill(proc)
        assert_consistent(root).close()
    assert interrupted == 2, "a scan finished before its kill; nothing was tested"
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
    with TestClient(create_app(mm, start_worker=False), base_url=LOCAL_URL) as client:
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
        steps = Limits().max_steps  # as long as the server accepts
        body = request([("k0", 0.8)], steps=steps).model_dump(mode="json")
        answer = client.post("/api/queue", json=body)
        assert answer.status_code == 202, answer.text
        item_id = answer.json()["id"]
        while client.get(f"/api/queue/{item_id}").json()["step"] < 1:
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.1)
    return item_id
