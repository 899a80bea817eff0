"""Killing a loraworks process with SIGKILL mid-work, and checking the root it leaves."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from loraworks.models import ModelManager
from loraworks.models.install import TMP_PREFIX
from loraworks.models.probe import content_hash

REPO = Path(__file__).resolve().parents[2]


def start(script: str, *args: str) -> subprocess.Popen:
    """Run `script` (Python source) in a fresh interpreter, stdout piped, line-buffered."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL; True when the process was still running (so the kill interrupted it)."""
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return alive


def wait_for_line(proc: subprocess.Popen, wanted: str, limit_s: float = 120) -> None:
    """Block until the child prints a line starting with `wanted` (hang guard `limit_s`)."""
    deadline = time.monotonic() + limit_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(wanted):
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before '{wanted}'")
    raise AssertionError(f"the child never printed '{wanted}'")


def assert_consistent(root: Path) -> ModelManager:
    """The root opens; SQLite is intact; every record points at a complete file (its hash
    matches); models/ holds nothing without a record; every gallery record is a whole PNG."""
    db = sqlite3.connect(root / "databases" / "loraworks.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    mm = ModelManager.open(root)
    records = mm.list()
    for record in records:
        assert record.status in ("ok", "error", "missing"), record
        if record.status == "ok":
            path = Path(record.path)
            assert path.exists(), f"{record.name}: points at missing {path}"
            assert content_hash(path) == record.hash, f"{record.name}: partial file {path}"
            if not record.in_place:
                assert path.is_relative_to(mm.paths.models / record.key), record
    keys = {r.key for r in records}
    for entry in mm.paths.models.iterdir():
        assert not entry.name.startswith(TMP_PREFIX), f"leftover {entry.name}"
        assert entry.name in keys, f"models/{entry.name} has no record"
    for image in mm.images.list(0, 10_000):
        with Image.open(image.path) as png:
            png.verify()
    return mm
