"""`install`: sources, copies, names, duplicates, errors that leave nothing behind."""

from __future__ import annotations

import json

import blake3
import pytest
import torch
from safetensors.torch import save_file

from loraworks.models import ModelError, ModelManager, ModelNotFound
from tests.models.lora_files import (
    kohya_sd1_tensors,
    kohya_sdxl_tensors,
    write,
    write_lcm_folder,
)


def _blake3(path) -> str:
    return "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()


def test_copy_install_file(mm, tmp_path):
    src = write(tmp_path / "src" / "Star Lora.safetensors", kohya_sd1_tensors())
    (tmp_path / "src" / "Star Lora.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    record = mm.install(src)
    assert (record.type, record.base, record.format, record.in_place) == (
        "lora",
        "sd1",
        "kohya",
        False,
    )
    assert record.path.parent == mm.paths.models / record.key
    assert record.path.read_bytes() == src.read_bytes()
    assert record.hash == _blake3(src)
    assert record.size == src.stat().st_size
    assert record.preview_path.read_bytes() == b"\x89PNG\r\n\x1a\n"
    assert mm.get("Star Lora").key == record.key
    assert ModelManager.open(mm.root).get(record.key) == record


def test_same_content_returns_existing_and_names_get_suffix(mm, tmp_path):
    a = write(tmp_path / "a.safetensors", kohya_sd1_tensors())
    first = mm.install(a, name="style")
    assert mm.install(tmp_path / "a.safetensors", name="other") == first
    second = mm.install(write(tmp_path / "b.safetensors", kohya_sd1_tensors(seed=9)), name="style")
    xl = mm.install(write(tmp_path / "c.safetensors", kohya_sdxl_tensors()), name="style")
    assert (first.name, second.name, xl.name) == ("style", "style-2", "style")
    assert len(mm.list(type="lora", base="sd1")) == 2
    with pytest.raises(ModelError, match="several models"):
        mm.get("style")
    assert mm.get("style", base="sdxl").key == xl.key


def test_names_are_sanitised(mm, tmp_path):
    src = write(tmp_path / "x.safetensors", kohya_sd1_tensors())
    record = mm.install(src, name="../../../etc/passwd\x00")
    assert "/" not in record.name and ".." not in record.name
    assert record.path.resolve().is_relative_to(mm.paths.models.resolve())


def test_in_place_and_folder_installs(mm, tmp_path):
    src = write(tmp_path / "keep.safetensors", kohya_sd1_tensors())
    record = mm.install(src, copy=False)
    assert (record.in_place, record.path) == (True, src)
    lcm = mm.install(write_lcm_folder(tmp_path / "LCM_LoRA_SD15"))
    assert (lcm.format, lcm.fewstep) == ("diffusers", "lcm")
    assert (lcm.path / "pytorch_lora_weights.safetensors").is_file()
    mm.remove(lcm.key)
    assert not (mm.paths.models / lcm.key).exists()
    mm.remove(record.key)
    assert src.exists()  # an in-place file outside the drop folder is the user's


def test_peft_folder(mm, tmp_path):
    folder = tmp_path / "peft-owl"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    prefix = "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.randn(4, 768, generator=g),
            f"{prefix}.lora_B.weight": torch.randn(32, 4, generator=g),
        },
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["to_k"]})
    )
    record = mm.install(folder)
    assert (record.base, record.format) == ("sd1", "peft")


def test_bad_sources_leave_nothing(mm, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="not a valid safetensors"):
        mm.install(junk)
    with pytest.raises(ModelError, match="no such file"):
        mm.install(tmp_path / "nope.safetensors")
    with pytest.raises(ModelError, match="unsupported file type"):
        mm.install(_touch(tmp_path / "a.gguf"))
    assert mm.list() == []
    assert list(mm.paths.models.iterdir()) == []


def _touch(path):
    path.write_bytes(b"x")
    return path


def test_remote_sources_fail_clearly_offline(mm):
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        mm.install("latent-consistency/lcm-lora-sdv1-5")
    with pytest.raises(ModelError, match=r"cannot download http://127\.0\.0\.1:9/x\.safetensors"):
        mm.install("http://127.0.0.1:9/x.safetensors")


def test_not_found_lists_close_matches(mm, tmp_path):
    mm.install(write(tmp_path / "starlight.safetensors", kohya_sd1_tensors()))
    with pytest.raises(ModelNotFound, match="did you mean: starlight"):
        mm.get("starlite", type="lora")


def test_cli_install_edit_show_remove(cli, tmp_path):
    src = write(tmp_path / "owl.safetensors", kohya_sd1_tensors())
    assert "installed lora 'owl' (sd1, kohya)" in cli("install", str(src)).output
    assert "already installed as 'owl'" in cli("install", str(src)).output
    cli("edit", "owl", "--triggers", "owlz, night", "--weight", "0.7")
    shown = cli.json("show", "owl")
    assert (shown["trigger_words"], shown["default_weight"]) == (["owlz", "night"], 0.7)
    out = cli("show", "owl-typo", code=1).output
    assert "error: no model named 'owl-typo'; did you mean: owl?" in out
    assert "error:" in cli("install", str(tmp_path / "missing.safetensors"), code=1).output
    assert cli.json("list", "--base", "sdxl") == []
    cli("remove", "owl")
    assert cli.json("list") == []


def test_cli_prints_brackets_from_files_as_written(cli, tmp_path):
    """Rich reads `[...]` as markup: a file's trigger words and metadata (`[/weird]`, an
    unmatched closing tag) once made `models show` and `list` fail with a traceback."""
    tags = json.dumps({"1_data": {"[/weird] tag": 9, "[b]bold[/b]": 3}})
    meta = {"ss_tag_frequency": tags, "ss_dataset_dirs": '{"[/x] dir": 1}'}
    cli("install", str(write(tmp_path / "owl.safetensors", kohya_sd1_tensors(), meta)))
    listed = cli("list").stdout
    assert "[/weird] tag" in listed  # the trigger word
    shown = cli("show", "owl").stdout
    assert '{"[/x] dir": 1}' in shown and '"[b]bold[/b]": 3' in shown
    assert "error: no model named '[nope]'" in cli("show", "[nope]", code=1).output


def test_standalone_vae_file(mm, tmp_path):
    from tests.fixtures.models import build_vae
    from tests.models.ldm_layout import vae_to_ldm

    state = {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(build_vae()).items()}
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vae-ft-mse.safetensors")
    )
    record = mm.install(tmp_path / "vae-ft-mse.safetensors")
    assert (record.type, record.base, record.format) == ("vae", "sd1", "checkpoint")


def test_inpainting_checkpoint_refused_clearly(mm, tmp_path):
    prefix = "model.diffusion_model."
    path = write(
        tmp_path / "inpaint.safetensors",
        {
            prefix + "input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3),
            prefix + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(
                32, 768
            ),
        },
    )
    with pytest.raises(ModelError, match="takes 9 input channels"):
        mm.install(path)
