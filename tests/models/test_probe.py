"""LCM family recognition and main-model bases, against the layouts of published files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loraworks.models.fewstep import detect_fewstep
from tests.models.lora_files import kohya_sd1_tensors, write, write_lcm_folder

# target module paths as the engine names them (component + diffusers module path)
RESNET = "unet.down_blocks.0.resnets.0"
ATTN = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
LCM_LAYOUT = [f"{RESNET}.conv1", f"{RESNET}.time_emb_proj", f"{ATTN}.attn1.to_q"]


@pytest.mark.parametrize(
    ("targets", "metadata", "name", "expected"),
    [
        # lcm-lora-sdv1-5 / train_lcm_distill_lora_*: whole UNet, no TE, no ss_* facts
        (LCM_LAYOUT, {}, "pytorch_lora_weights", "lcm"),
        # a kohya LoCon trained on a concept: same UNet coverage, but with TE and ss_* facts
        (
            [*LCM_LAYOUT, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"],
            {"ss_network_module": "lycoris.kohya"},
            "style",
            "none",
        ),
        (LCM_LAYOUT, {"ss_network_module": "networks.lora"}, "style", "none"),
        # attention-only UNet LoRA (most concept LoRAs without TE training)
        ([f"{ATTN}.attn1.to_q", f"{ATTN}.attn2.to_k"], {}, "style", "none"),
        # metadata says so
        ([f"{ATTN}.attn1.to_q"], {"modelspec.title": "LCM-LoRA SDXL"}, "x", "lcm"),
        (
            [f"{ATTN}.attn1.to_q"],
            {"ss_training_comment": "latent consistency distilled"},
            "x",
            "lcm",
        ),
        # the name, but not inside other words
        ([f"{ATTN}.attn1.to_q"], {}, "lcm_lora_sd15", "lcm"),
        ([f"{ATTN}.attn1.to_q"], {}, "calcmagic", "none"),
    ],
)
def test_lcm_family(targets, metadata, name, expected):
    assert detect_fewstep(targets, metadata, name).family == expected


def test_installed_command_lists_the_drop_folder(root):
    write(root / "autoimport/lora/star.safetensors", kohya_sd1_tensors())
    write_lcm_folder(root / "autoimport/lora/lcm")
    code = "from loraworks.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "models", "list", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "added lora 'star' (sd1)" in result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "kohya" in lines["star"] and "sd1" in lines["star"]
    assert lines["lcm"].split(")")[1].split()[0] == "lcm"  # the few-step column
