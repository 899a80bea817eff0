"""Security and crash safety: pickles never run, headers are capped, a killed install leaves
a consistent root."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch

from loraworks.lora import LoRAFormatError, load_lora
from loraworks.models import ModelError, ModelManager, UnsafeFileError
from tests.models.lora_files import kohya_sd1_tensors, write


class Payload:
    """Unpickling this calls `open(marker, "w")`, creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_payload_never_runs(mm, tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1), "x": Payload(marker)}, evil)
    with pytest.raises(UnsafeFileError, match="refused"):
        mm.install(evil)
    drop = mm.paths.autoimport_lora / evil.name
    drop.write_bytes(evil.read_bytes())
    mm.scan()
    record = mm.get("evil")
    assert record.status == "error" and "refused" in record.error
    assert not marker.exists()
    assert list(mm.paths.models.iterdir()) == []


def test_plain_pickle_lora_is_read_weights_only(mm, tmp_path):
    path = tmp_path / "plain.bin"
    torch.save(kohya_sd1_tensors(), path)
    record = mm.install(path)
    assert (record.base, record.format) == ("sd1", "kohya")


def test_oversized_header_refused_before_parsing(mm, tmp_path):
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelError, match="header of 1000000000000 bytes"):
        mm.install(huge)


def test_one_header_cap_for_loras_and_models(mm, tmp_path):
    """Headers over 64 MiB are refused by the manager and the engine alike, even when the file
    is big enough to hold them (the manager used to allow 100 MiB and then parse it)."""
    big = tmp_path / "big-header.safetensors"
    with big.open("wb") as f:
        f.write(struct.pack("<Q", 64 * 2**20 + 1))
        f.truncate(65 * 2**20)  # sparse: the claimed header fits in the file
    with pytest.raises(UnsafeFileError, match="64 MiB limit"):
        mm.install(big)
    with pytest.raises(LoRAFormatError, match="64 MiB limit"):
        load_lora(big)
    assert all(r.name != "big-header" for r in mm.list())


_INSTALL = (
    "import sys; from loraworks.models import ModelManager; "
    "ModelManager.open(sys.argv[1]).install(sys.argv[2]); print('done')"
)


@pytest.mark.parametrize("stage", ["before-rename", "after-rename"])
def test_sigkill_during_install_leaves_root_consistent(root, tmp_path, stage):
    src = write(tmp_path / "big.safetensors", kohya_sd1_tensors())
    ModelManager.open(root).close()
    env = dict(os.environ, LORAWORKS_TEST_INSTALL_PAUSE=f"{stage}:120", PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", _INSTALL, str(root), str(src)], env=env)
    models = root / "models"
    try:
        deadline = time.monotonic() + 60
        reached = (
            (lambda: any(p.name.startswith(".tmp-") for p in models.iterdir()))
            if stage == "before-rename"
            else (lambda: any(len(p.name) == 32 for p in models.iterdir()))
        )
        while not reached():
            assert proc.poll() is None, "install finished before it could be killed"
            assert time.monotonic() < deadline, "install never reached the pause"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(models.iterdir())  # something was left behind at the kill
    mm = ModelManager.open(root)
    assert mm.list() == []
    assert list(models.iterdir()) == []
    record = mm.install(src)  # and installing again works
    assert [p.name for p in models.iterdir()] == [record.key]


def test_diffusers_folder_with_bin_weights(mm, tmp_path):
    from tests.models.lora_files import lcm_sd1_tensors

    good = tmp_path / "lcm-bin"
    good.mkdir()
    torch.save(lcm_sd1_tensors(), good / "pytorch_lora_weights.bin")
    record = mm.install(good)
    assert (record.format, record.base, record.fewstep) == ("diffusers", "sd1", "lcm")

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil-folder"
    evil.mkdir()
    torch.save({"x": Payload(marker)}, evil / "pytorch_lora_weights.bin")
    with pytest.raises(UnsafeFileError, match="refused"):
        mm.install(evil)
    assert not marker.exists()
