"""One LoRA with deeply nested or huge metadata (a `ss_tag_frequency` of 100,000 nested arrays,
a nested `<name>.json` sidecar, a nested safetensors header, 20 MB of tags) is that file's
problem: the other files are imported, the root opens, the API answers 4xx or 2xx, and records
keep only `[limits] metadata_kept_kb` of metadata. Before, `RecursionError` failed every scan,
so `loraworks serve` and `models list` could not start until the file was removed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from loraworks.cli import app as cli_app
from loraworks.models import ModelManager
from loraworks.models import scanning as scanning_module
from loraworks.server.app import create_app
from tests.models.lora_files import kohya_metadata, kohya_sd1_tensors, write
from tests.server.conftest import LOCAL_URL

DEEP = "[" * 100_000 + "]" * 100_000


def _nested_header_file(path: Path) -> Path:
    """A safetensors file whose header JSON itself nests 100,000 levels (in a tensor entry)."""
    header = ('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + DEEP + "}}").encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return path


@pytest.fixture
def hostile_root(tmp_path) -> Path:
    drop = tmp_path / "root" / "autoimport" / "lora"
    write(drop / "good.safetensors", kohya_sd1_tensors(1))
    write(drop / "deeptags.safetensors", kohya_sd1_tensors(2), {"ss_tag_frequency": DEEP})
    write(drop / "deepside.safetensors", kohya_sd1_tensors(3))
    (drop / "deepside.json").write_text('{"activation text": ' + DEEP + "}")
    drop.mkdir(parents=True, exist_ok=True)
    _nested_header_file(drop / "deepheader.safetensors")
    return tmp_path / "root"


def test_nested_metadata_does_not_stop_the_scan_or_the_root(hostile_root):
    mm = ModelManager.open(hostile_root)  # raised RecursionError before
    try:
        by_name = {r.name: r for r in mm.list()}
        assert by_name["good"].status == "ok"
        # the nested values are only ignored: the LoRAs themselves are fine
        assert by_name["deeptags"].status == "ok" and by_name["deeptags"].trigger_words == []
        assert by_name["deepside"].status == "ok" and by_name["deepside"].trigger_words == []
        assert by_name["deepheader"].status == "error"
        assert "nested" in by_name["deepheader"].error
    finally:
        mm.close()
    listing = CliRunner().invoke(cli_app, ["models", "list", "--root", str(hostile_root)])
    assert listing.exit_code == 0 and "Traceback" not in listing.output
    assert "good" in listing.output


def test_nested_metadata_through_the_api(hostile_root, tmp_path):
    mm = ModelManager.open(hostile_root)
    try:
        with TestClient(create_app(mm, start_worker=False), base_url=LOCAL_URL) as api:
            assert api.post("/api/models/scan").status_code == 200
            nested = _nested_header_file(tmp_path / "nested.safetensors")
            answer = api.post("/api/models/install", json={"source": str(nested)})
            assert answer.status_code == 400 and "nested" in answer.json()["error"]
            tags = write(
                tmp_path / "tags.safetensors", kohya_sd1_tensors(4), {"ss_tag_frequency": DEEP}
            )
            assert api.post("/api/models/install", json={"source": str(tags)}).status_code == 201
            assert api.get("/api/models").status_code == 200
    finally:
        mm.close()


def test_an_unforeseen_failure_is_that_files_error_record(tmp_path, monkeypatch):
    """Isolation itself, whatever the cause: a probe that raises what no check expects."""
    drop = tmp_path / "root" / "autoimport" / "lora"
    write(drop / "good.safetensors", kohya_sd1_tensors(1))
    write(drop / "cursed.safetensors", kohya_sd1_tensors(2))
    real_probe = scanning_module.probe

    def probe(path, **kwargs):
        if path.name == "cursed.safetensors":
            raise RecursionError("maximum recursion depth exceeded")
        return real_probe(path, **kwargs)

    monkeypatch.setattr(scanning_module, "probe", probe)
    mm = ModelManager.open(tmp_path / "root")
    try:
        by_name = {r.name: r for r in mm.list()}
        assert by_name["good"].status == "ok"
        assert by_name["cursed"].status == "error"
        assert "RecursionError" in by_name["cursed"].error
    finally:
        mm.close()


def test_huge_metadata_is_read_for_triggers_but_not_kept(tmp_path):
    tags = {f"tag{i:07d}": 1 for i in range(400_000)}  # ~9 MB of JSON
    tags["zkstar"] = 50
    drop = tmp_path / "root" / "autoimport" / "lora"
    write(drop / "big.safetensors", kohya_sd1_tensors(), kohya_metadata(tags))
    mm = ModelManager.open(tmp_path / "root")
    try:
        record = mm.get("big")
        assert record.trigger_words == ["zkstar"]
        assert "ss_tag_frequency" not in record.metadata  # stays in the file
        assert record.metadata["ss_network_dim"] == "4"
        kept = len(json.dumps(record.metadata))
        assert kept <= mm.config.limits.metadata_kept_kb * 1024
    finally:
        mm.close()
