"""A drop-folder file truncated while it is hashed (`cp` over a large checkpoint while the
watcher reads it): that file gets an error record and the process lives. Hashing through a
memory map died here with SIGBUS (exit 135, no message), taking the server with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraworks.models import ModelManager
from tests.models.lora_files import kohya_sd1_tensors, write

_SCAN = """
import json, sys
from loraworks.models import ModelManager
mm = ModelManager.open(sys.argv[1])
print(json.dumps({r.path.name: [r.status, r.error] for r in mm.list()}), flush=True)
"""
SPARSE_BYTES = 8 << 30  # holes only: no disk used, and far longer to hash than to cut


def _has_open(pid: int, path: Path) -> bool:
    """Whether the process holds `path` open or mapped (its hash has begun)."""
    proc = Path(f"/proc/{pid}")
    try:
        if str(path) in (proc / "maps").read_text():
            return True
        return any(os.path.realpath(fd) == str(path) for fd in (proc / "fd").iterdir())
    except OSError:  # the process ended, or an fd closed while listed
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_drop_folder_file_truncated_while_hashed_is_an_error_record(tmp_path):
    root = tmp_path / "root"
    drop = root / "autoimport" / "lora"
    write(drop / "a.safetensors", kohya_sd1_tensors())
    big = drop / "big.safetensors"
    with big.open("wb") as f:
        f.truncate(SPARSE_BYTES)
    if big.stat().st_blocks:
        pytest.skip("the filesystem has no sparse files")
    big = big.resolve()
    child = subprocess.Popen(
        [sys.executable, "-c", _SCAN, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 120  # a hang guard only
        while not _has_open(child.pid, big):
            assert child.poll() is None and time.monotonic() < deadline, "never hashed"
            time.sleep(0.001)
        os.truncate(big, 4096)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, f"exit {child.returncode} (-7: SIGBUS): {err[-2000:]}"
    records = json.loads(out)
    assert records["a.safetensors"] == ["ok", None]
    status, error = records["big.safetensors"]
    assert status == "error" and "the file changed while it was read" in error
    # the copy ends: the next scan reads the file again and records it
    write(big, kohya_sd1_tensors(seed=5))
    mm = ModelManager.open(root)
    try:
        assert {r.path.name: r.status for r in mm.list()} == {
            "a.safetensors": "ok",
            "big.safetensors": "ok",
        }
    finally:
        mm.close()
