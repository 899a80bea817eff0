"""A main model's facts before it is loaded: prediction type, native size, memory per
precision — checked against the pipeline itself and a hand-counted checkpoint."""

from __future__ import annotations

import torch

from loraworks.models.mainfacts import PRECISIONS, main_model_facts
from tests.fixtures.models import build_pipeline
from tests.models.lora_files import write

LDM = "model.diffusion_model."


def test_a_diffusers_folder_s_facts_are_the_pipeline_s(mm, tmp_path, cli):
    pipe = build_pipeline("sdxl", tmp_path / "work")
    pipe.save_pretrained(tmp_path / "tiny-xl")
    record = mm.install(tmp_path / "tiny-xl", name="tiny-xl", type="main")
    facts = main_model_facts(record)
    parts = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    assert facts.parameters == sum(p.numel() for m in parts for p in m.parameters())
    assert facts.prediction_type == pipe.scheduler.config.prediction_type
    assert facts.native_size == pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert facts.memory() == {k: facts.parameters * n for k, n in PRECISIONS.items()}
    shown = cli.json("show", "tiny-xl")
    assert (shown["native_size"], shown["memory"]["bfloat16"]) == (
        facts.native_size,
        facts.parameters * 2,
    )
    assert "prediction_type" in cli("show", "tiny-xl").stdout


def test_a_checkpoint_counts_only_what_is_loaded(mm, tmp_path):
    """An SD1 file with an EMA copy of the UNet: the copy is not loaded, so not counted; SD1's
    published size and prediction type come from its architecture."""
    tensors = {
        LDM + "input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),  # 1152
        LDM + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 768),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),  # 288
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768),
        "model_ema.diffusion_modelinput_blocks00weight": torch.zeros(32, 4, 3, 3),
    }
    record = mm.install(write(tmp_path / "sd1-file.safetensors", tensors), type="main")
    facts = main_model_facts(record)
    assert facts.parameters == 1152 + 32 * 768 + 288 + 768
    assert (facts.prediction_type, facts.native_size) == ("epsilon", 512)
