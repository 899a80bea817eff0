"""One weight-file reader for the engine and the manager: one policy for pickle entries that
are not tensors, one header parse per install, a PEFT pickle loaded once, and the engine's
base evidence and warnings kept on the record."""

from __future__ import annotations

import json

import torch

from loraworks.lora import files, load_lora
from loraworks.models import safefiles
from tests.models.lora_files import kohya_clip_l_tensors, kohya_sd1_tensors, write


def _with_training_state(path):
    """A kohya .pt as some trainers save it: the tensors plus an epoch count and a note."""
    torch.save({**kohya_sd1_tensors(), "epoch": 3, "note": "trained on cats"}, path)
    return path


def test_pickle_entries_that_are_not_tensors_are_left_out_and_named(mm, tmp_path):
    path = _with_training_state(tmp_path / "cats.pt")
    lora = load_lora(path)
    plain = load_lora((kohya_sd1_tensors(), {}))
    assert lora.layers.keys() == plain.layers.keys()
    for target, layer in lora.layers.items():
        assert all(
            torch.equal(t, plain.layers[target].tensors()[k]) for k, t in layer.tensors().items()
        )
    (note,) = [w for w in lora.warnings if "not tensors" in w]
    assert "epoch" in note and "note" in note
    record = mm.install(path)  # the manager reads it with the same policy and keeps the note
    assert record.status == "ok" and note in record.warnings


def _count(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_a_safetensors_header_is_parsed_once_per_install(mm, tmp_path, monkeypatch):
    calls: list[str] = []
    _count(monkeypatch, files, "read_header", calls)  # the engine's own calls
    _count(monkeypatch, safefiles, "_read_header", calls)  # the manager's, through its adapter
    mm.install(write(tmp_path / "style.safetensors", kohya_sd1_tensors()))
    assert calls == ["_read_header"]


def test_a_peft_pickle_is_loaded_once_per_install(mm, tmp_path, monkeypatch):
    folder = tmp_path / "peft-style"
    folder.mkdir()
    att = "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    g = torch.Generator().manual_seed(0)
    torch.save(
        {
            f"{att}.lora_A.weight": torch.randn(4, 768, generator=g) * 0.01,
            f"{att}.lora_B.weight": torch.randn(32, 4, generator=g) * 0.01,
        },
        folder / "adapter_model.bin",
    )
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8})
    )
    calls: list[str] = []
    _count(monkeypatch, torch, "load", calls)
    record = mm.install(folder)
    assert (record.format, record.base) == ("peft", "sd1")
    assert calls == ["load"]


def test_records_show_how_the_base_was_decided_and_the_engine_s_warnings(mm, tmp_path):
    meta = {"ss_base_model_version": "sdxl_base_v1-0"}
    clip_l = mm.install(write(tmp_path / "clip-l.safetensors", kohya_clip_l_tensors(), meta))
    lora = load_lora(tmp_path / "clip-l.safetensors")
    assert clip_l.base_evidence == lora.base_evidence and clip_l.base_evidence
    assert clip_l.warnings == lora.warnings
    assert any("text_encoder width 768" in line for line in clip_l.base_evidence)
    sd1 = mm.install(write(tmp_path / "sd1.safetensors", kohya_sd1_tensors()))
    assert any("cross-attention width 768" in line for line in sd1.base_evidence)
    assert sd1.warnings == []


def test_models_show_prints_the_evidence_and_warnings(cli, tmp_path):
    """A CLIP-L-only file whose metadata says SD1 while SDXL naming is used: `show` gives how
    the base was decided, one line each, and the engine's warnings."""
    meta = {"ss_base_model_version": "sd_v1"}
    cli("install", str(write(tmp_path / "clip-l.safetensors", kohya_clip_l_tensors(), meta)))
    record = cli.json("show", "clip-l")
    assert (
        record["base_evidence"]
        and record["base_evidence"] == load_lora(tmp_path / "clip-l.safetensors").base_evidence
    )
    shown = cli("show", "clip-l").stdout
    for line in record["base_evidence"] + record["warnings"]:
        assert line.split(" (")[0].split(" →")[0] in shown
