"""`loraworks lora …`: the commands call the tools, print per-layer results, refuse bad input in
one line (exit 1, no traceback, nothing written) and install through the models root."""

from __future__ import annotations

import hashlib
import json

import pytest
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

from loraworks.cli.lora import register
from loraworks.lora import load_lora
from tests.fixtures.models import build_components
from tests.lora.util import kohya_lora

app = typer.Typer()
register(app)


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(app, ["lora", *args], env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def files(tmp_path):
    tiny = build_components("sd1")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(kohya_lora(tiny, rank=4, alpha=2.0, seed=1), str(a), {"ss_output_name": "a"})
    save_file(kohya_lora(tiny, rank=8, alpha=4.0, seed=2), str(b))
    return a, b


def test_inspect_json(files):
    a, _ = files
    facts = json.loads(run("inspect", str(a), "--json").stdout)
    modules = len(load_lora(a).layers)
    assert facts["base"] == "sd1" and facts["kinds"] == {"lora": modules}
    assert facts["blocks"]["unet.down_blocks.0"]["ranks"] == [4]
    assert facts["training"]["ss_output_name"] == "a"
    data = a.read_bytes()
    after = data[8 + int.from_bytes(data[:8], "little") :]
    assert facts["hashes"]["sshs_model_hash"] == hashlib.sha256(after).hexdigest()
    assert facts["hashes"]["autov2"] == hashlib.sha256(data).hexdigest()[:10]


def test_resize_merge_convert_write_what_they_say(files, tmp_path):
    a, b = files
    r = run("resize", str(a), "--rank", "2", "--out", str(tmp_path / "r.safetensors"))
    assert "rank 4 → 2" in r.stdout
    assert {ly.rank for ly in load_lora(tmp_path / "r.safetensors").layers.values()} == {2}
    run("merge", f"{a}:0.5", str(b), "--concat", "--out", str(tmp_path / "m.safetensors"))
    assert {ly.rank for ly in load_lora(tmp_path / "m.safetensors").layers.values()} == {12}
    run("convert", str(a), "--to", "peft", "--out", str(tmp_path / "p"))
    assert load_lora(tmp_path / "p").format == "peft"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "0"], "rank must be at least 1"),
        (["--rank", "33"], "above the dimensions"),
        (["--dynamic", "sv_fro=2"], "sv_fro must lie in"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, args, message):
    a, _ = files
    out = tmp_path / "x.safetensors"
    r = run("resize", str(a), *args, "--out", str(out), code=1)
    assert message in r.output and not out.exists()


def test_an_existing_out_is_refused_without_force(files):
    a, b = files
    before = b.read_bytes()
    r = run("resize", str(a), "--rank", "2", "--out", str(b), code=1)
    assert "--force" in r.output and b.read_bytes() == before
    run("resize", str(a), "--rank", "2", "--out", str(b), "--force")
    assert b.read_bytes() != before


def test_install_puts_the_result_in_the_models_root(files, tmp_path):
    a, _ = files
    out = tmp_path / "small.safetensors"
    root = tmp_path / "root"
    r = run("resize", str(a), "--rank", "2", "--out", str(out), "--install", "--root", str(root))
    assert "installed lora 'small' (sd1)" in r.stdout


def test_a_missing_path_is_not_looked_up_as_a_name(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAWORKS_ROOT", str(tmp_path / "root"))
    r = run("inspect", str(tmp_path / "gone.safetensors"), code=1)
    assert "no such file" in r.output and not (tmp_path / "root").exists()


@pytest.fixture
def root(tmp_path):
    """A models root with a tiny SD1 main model installed as 'tiny'."""
    from loraworks.models import ModelManager
    from tests.fixtures.models import build_pipeline

    root = tmp_path / "root"
    build_pipeline("sd1", tmp_path / "src").save_pretrained(str(tmp_path / "main"))
    mm = ModelManager.open(root)
    mm.install(tmp_path / "main", name="tiny")
    mm.close()
    return root


def test_bake_and_extract_through_the_models_root(files, root, tmp_path):
    """bake an installed main model (installed as a new one), then extract the LoRA back."""
    a, _ = files
    common = ["--root", str(root)]
    run("bake", "tiny", f"{a}:1", "--out", str(tmp_path / "baked"), "--dtype", "fp32", *common)
    out = tmp_path / "back.safetensors"
    r = run(
        "extract", "--base", "tiny", "--tuned", "baked", "--rank", "4", "--out", str(out), *common
    )
    assert "rank 4" in r.stdout
    back, src = load_lora(out), load_lora(a)
    assert back.layers.keys() == src.layers.keys()


def test_bake_single_file_installs_a_checkpoint(files, root, tmp_path):
    """`bake --single-file` writes NAME.safetensors, installed as a single-file main model;
    another name is refused before anything is loaded."""
    from loraworks.models import ModelManager

    a, _ = files
    common = ["--root", str(root), "--single-file", "--dtype", "fp16"]
    r = run("bake", "tiny", f"{a}:1", "--out", str(tmp_path / "baked"), *common, code=1)
    assert "NAME.safetensors" in r.output and not (tmp_path / "baked").exists()
    run("bake", "tiny", f"{a}:1", "--out", str(tmp_path / "baked.safetensors"), *common)
    mm = ModelManager.open(root)
    record = mm.get("baked", type="main")
    mm.close()
    assert (record.base, record.format) == ("sd1", "checkpoint")
    r = run("bake", "tiny", f"{a}:1", "--out", str(tmp_path / "baked.safetensors"), *common, code=1)
    assert "--force" in r.output
