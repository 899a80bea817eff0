"""Each trainer runs a few steps on tiny data and writes files in the layout others read.

CI never retrains the shipped weights; these only show the code paths work end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from loraworks.demo import architecture as arch
from loraworks.demo.train_base import BaseTrainConfig, export_pipeline, train_base
from loraworks.demo.train_lcm import WEIGHTS_NAME, LCMTrainConfig, train_lcm
from loraworks.demo.train_lora import LoRATrainConfig, train_lora
from loraworks.lora import load_lora
from loraworks.models.metadata import triggers_from_tag_frequency
from loraworks.models.probe import probe


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    """An untrained demo-architecture model, exported as the trainers export it."""
    folder = tmp_path_factory.mktemp("base") / "model"
    torch.manual_seed(0)
    vae = arch.make_vae()
    vae.register_to_config(scaling_factor=1.0)
    tokenizer = arch.make_tokenizer(folder.parent / "tok")
    return export_pipeline(folder, vae, arch.make_unet(), arch.make_text_encoder(), tokenizer)


def _keys(path: Path) -> tuple[set[str], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys()), f.metadata() or {}


def test_base_trainer_writes_a_diffusers_folder_and_resumes(tmp_path):
    cfg = BaseTrainConfig(
        out=tmp_path,
        vae_steps=2,
        unet_steps=2,
        decoder_steps=2,
        decoder_batch=2,
        images=8,
        batch=2,
        checkpoint_every=2,
    )
    model = train_base(cfg)
    assert (model / "step.txt").read_text().strip() == "2"
    cfg.unet_steps = 3
    train_base(cfg)
    assert torch.load(tmp_path / "unet.pt", weights_only=True)["step"] == 3
    pipe = StableDiffusionPipeline.from_pretrained(str(model), dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32
    assert json.loads((model / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
    with safe_open(str(model / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_lora_trainer_writes_kohya_file_with_trigger(tmp_path, base_folder):
    cfg = LoRATrainConfig(
        base=base_folder, out=tmp_path, steps=2, rank=4, alpha=2, batch=4, stars=8
    )
    keys, meta = _keys(train_lora(cfg))
    assert (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
        in keys
    )
    assert "lora_unet_up_blocks_2_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha" in keys
    assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj.lora_up.weight" in keys
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in keys)
    assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 2.0
    assert meta["ss_base_model_version"] == "sd_v1"
    assert triggers_from_tag_frequency(meta["ss_tag_frequency"]) == ["zkstar"]
    lora = load_lora(cfg.out / "demo-star.safetensors")
    assert (lora.format, lora.base) == ("kohya", "sd1")
    assert "text_encoder.encoder.layers.0.self_attn.q_proj" in lora.layers or (
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj" in lora.layers
    )


def test_lora_trainer_locon_adds_resnet_layers_and_stays_a_concept_lora(tmp_path, base_folder):
    cfg = LoRATrainConfig(
        base=base_folder,
        out=tmp_path,
        steps=1,
        rank=4,
        alpha=2,
        batch=2,
        stars=4,
        unet_layers="all",
    )
    path = train_lora(cfg)
    keys, meta = _keys(path)
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in keys
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.alpha" in keys
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": 4, "conv_alpha": 2.0}
    found = probe(path)
    assert (found.type, found.base, found.fewstep.family) == ("lora", "sd1", "none")
    with pytest.raises(ValueError, match="unet_layers"):
        LoRATrainConfig(base=base_folder, out=tmp_path, unet_layers="convs")


def test_lcm_trainer_writes_a_unet_only_lora_folder(tmp_path, base_folder):
    cfg = LCMTrainConfig(base=base_folder, out=tmp_path, steps=2, rank=4, batch=2, images=8)
    folder = train_lcm(cfg)
    assert [p.name for p in folder.iterdir()] == [WEIGHTS_NAME]
    keys, _ = _keys(folder / WEIGHTS_NAME)
    assert (
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
        in keys
    )
    assert "lora_unet_down_blocks_1_resnets_0_conv1.alpha" in keys
    assert all(k.startswith("lora_unet_") for k in keys)
    found = probe(folder)
    assert (found.type, found.base) == ("lora", "sd1")
    assert found.fewstep.family == "lcm"


def test_train_cli_refuses_an_unknown_unet_layer_set_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from loraworks.cli import app

    args = ["train", "lora", "--base", str(tmp_path), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--unet-layers", "convs"])
    assert result.exit_code == 2
    assert "'convs' is not one of" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
