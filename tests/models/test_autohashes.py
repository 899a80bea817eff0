"""A1111/Civitai hashes (#19) against independent computations: hashlib over the file's bytes,
over the bytes after the safetensors header (its length read here with `struct`), and the
`sshs_model_hash` kohya's trainer writes, computed as sd-scripts' `train_util` does it: the
tensors serialised with only the `ss_*` metadata, hashed after that header."""

from __future__ import annotations

import json
import sqlite3

import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

from loraworks.models import ModelManager
from loraworks.models.hashing import digest_file
from tests.embeddings.producers import write_a1111
from tests.fixtures.a1111_hashes import after_header as _after_header
from tests.fixtures.a1111_hashes import sha256 as _sha
from tests.fixtures.checkpoints import published_layout, write_checkpoint
from tests.fixtures.models import build_vae
from tests.models.lora_files import kohya_metadata, kohya_sd1_tensors, write, write_lcm_folder


def _kohya_sshs_hash(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """What kohya's trainer stores as `sshs_model_hash`: the bytes safetensors would write for
    these tensors with only the `ss_*` metadata, hashed after their header."""
    training_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    return _sha(_after_header(safetensors.torch.save(tensors, metadata=training_only)))


@pytest.mark.parametrize("metadata", [{}, {"ss_note": "x" * 3000, "modelspec.title": "t"}])
def test_digests_equal_hashlib_over_the_file_and_after_the_header(tmp_path, metadata):
    path = write(tmp_path / "l.safetensors", kohya_sd1_tensors(), metadata)
    data = path.read_bytes()
    digests = digest_file(path, sha256=True, after_header=True)
    assert digests.sha256 == _sha(data)
    assert digests.after_header == _sha(_after_header(data))
    assert digests.after_header != digests.sha256


def test_digests_of_a_file_shorter_than_its_header_length_field(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    digests = digest_file(path, sha256=True, after_header=True)
    assert digests.sha256 == _sha(b"\x01\x02") and digests.after_header is None


def test_lora_record_autov3_is_the_hash_after_the_header(mm, tmp_path):
    path = write(tmp_path / "star.safetensors", kohya_sd1_tensors(), {"ss_x": "1"})
    data = path.read_bytes()
    record = mm.install(path)
    assert record.hashes == {
        "SHA256": _sha(data),
        "AutoV2": _sha(data)[:10],
        "AutoV3": _sha(_after_header(data))[:12],
    }
    # editing only the header's metadata keeps AutoV3, changes SHA256
    edited = write(tmp_path / "edited.safetensors", kohya_sd1_tensors(), {"ss_x": "22"})
    again = mm.install(edited)
    assert again.hashes["AutoV3"] == record.hashes["AutoV3"]
    assert again.hashes["SHA256"] != record.hashes["SHA256"]


def test_autov3_of_a_kohya_file_equals_the_sshs_model_hash_kohya_writes(mm, tmp_path):
    tensors = kohya_sd1_tensors(seed=3)
    metadata = kohya_metadata({"zkstar": 4}, **{"modelspec.title": "Star", "user": "someone"})
    sshs = _kohya_sshs_hash(tensors, metadata)
    path = write(tmp_path / "kohya.safetensors", tensors, {**metadata, "sshs_model_hash": sshs})
    record = mm.install(path)
    assert record.hashes["AutoV3"] == sshs[:12]
    assert record.hashes["sshs_model_hash"] == sshs


@pytest.mark.parametrize(
    "hostile",
    ["", "abc", "g" * 64, "a" * 63, "a" * 65, "../" * 30, "A" * 64 + "\n" + "b" * 5000],
)
def test_a_hostile_sshs_model_hash_is_ignored(mm, tmp_path, hostile):
    path = write(tmp_path / "h.safetensors", kohya_sd1_tensors(), {"sshs_model_hash": hostile})
    record = mm.install(path)
    assert record.status == "ok"
    assert "sshs_model_hash" not in record.hashes
    assert record.hashes["AutoV3"] == _sha(_after_header(path.read_bytes()))[:12]


def test_upper_case_sshs_model_hash_is_kept_lower_case(mm, tmp_path):
    value = "ABCDEF0123456789" * 4
    path = write(tmp_path / "u.safetensors", kohya_sd1_tensors(), {"sshs_model_hash": value})
    assert mm.install(path).hashes["sshs_model_hash"] == value.lower()


def test_checkpoint_vae_embedding_and_folders(mm, tmp_path):
    ckpt = write_checkpoint(
        tmp_path / "m.safetensors", published_layout("sd1", "tiny"), torch.float16
    )
    main = mm.install(ckpt)
    assert main.type == "main"
    assert main.hashes == {
        "SHA256": _sha(ckpt.read_bytes()),
        "AutoV2": _sha(ckpt.read_bytes())[:10],
    }
    vae_file = tmp_path / "vae-ft.safetensors"
    save_file({k: v.contiguous() for k, v in build_vae().state_dict().items()}, str(vae_file))
    vae = mm.install(vae_file)
    assert vae.type == "vae"
    assert vae.hashes == {
        "SHA256": _sha(vae_file.read_bytes()),
        "AutoV2": _sha(vae_file.read_bytes())[:10],
    }
    emb = write_a1111(tmp_path / "zq.pt", torch.randn(2, 768))
    assert mm.install(emb).hashes["SHA256"] == _sha(emb.read_bytes())
    # a diffusers LoRA folder: its weights file is what A1111 would load
    folder = write_lcm_folder(tmp_path / "lcm")
    weights = (folder / "pytorch_lora_weights.safetensors").read_bytes()
    assert mm.install(folder).hashes["AutoV3"] == _sha(_after_header(weights))[:12]


def test_a_diffusers_pipeline_folder_has_no_hashes(mm, tmp_path):
    from tests.fixtures.models import build_pipeline

    build_pipeline("sd1", tmp_path / "pipe").save_pretrained(tmp_path / "pipe")
    assert mm.install(tmp_path / "pipe").hashes == {}


def test_records_from_before_the_hashes_get_them_on_the_next_open(root, tmp_path):
    mm = ModelManager.open(root)
    lora = mm.install(write(tmp_path / "a.safetensors", kohya_sd1_tensors()))
    gone = mm.install(write(tmp_path / "b.safetensors", kohya_sd1_tensors(seed=9)), copy=False)
    database = mm.paths.database
    mm.close()
    with sqlite3.connect(database) as db:
        db.execute("UPDATE models SET hashes = NULL")
    (tmp_path / "b.safetensors").unlink()  # gone: stays without hashes, nothing fails
    mm = ModelManager.open(root, scan=False)
    try:
        assert mm.get(lora.key).hashes == lora.hashes and lora.hashes
        assert mm.get(gone.key).hashes == {}
    finally:
        database = mm.paths.database
    mm.close()
    with sqlite3.connect(database) as db:
        rows = dict(db.execute("SELECT key, hashes FROM models").fetchall())
    assert json.loads(rows[lora.key]) == lora.hashes and rows[gone.key] is None


def test_models_show_lists_the_hashes(root, tmp_path, cli):
    path = write(tmp_path / "shown.safetensors", kohya_sd1_tensors(seed=4))
    cli("install", str(path))
    autov3 = _sha(_after_header(path.read_bytes()))[:12]
    assert f"AutoV3 {autov3}" in cli("show", "shown").output
    assert cli.json("show", "shown")["hashes"]["AutoV3"] == autov3
