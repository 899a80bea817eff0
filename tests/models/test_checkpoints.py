"""Main models: an SD1.5-layout single-file checkpoint and a diffusers folder install and load
offline into pipelines that generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel

from loraworks.models import ModelError
from loraworks.models.tokenizer import clip_tokenizer
from tests.fixtures.models import build_pipeline, text_encoder_config
from tests.models.ldm_layout import sd1_to_ldm, sd2_to_ldm, sdxl_to_ldm

# CLIP's published token ids for this sentence (openai/clip-vit-large-patch14 tokenizer)
ASTRONAUT = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]


def _sd1_pipeline_with_real_vocab(folder):
    """The tiny SD1 fixture, with a text encoder sized for CLIP's 49,408-token vocabulary
    (single-file checkpoints never carry a tokenizer, so ours must fit it)."""
    pipe = build_pipeline("sd1", folder)
    cfg = text_encoder_config("sd1")
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (
        49408,
        49406,
        49407,
        49407,
    )
    torch.manual_seed(5)
    pipe.text_encoder = CLIPTextModel(cfg).eval()
    return pipe


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert different == []


def test_clip_tokenizer_is_the_real_one(tmp_path):
    tok = clip_tokenizer(tmp_path, "<|endoftext|>")
    assert len(tok) == 49408
    assert tok("a photo of an astronaut riding a horse").input_ids == ASTRONAUT


@pytest.fixture(scope="module")
def sd1_original(tmp_path_factory):
    return _sd1_pipeline_with_real_vocab(tmp_path_factory.mktemp("orig"))


def test_single_file_sd1_checkpoint_installs_and_loads_offline(
    mm, tmp_path, monkeypatch, sd1_original
):
    original = sd1_original
    ckpt = tmp_path / "tiny-sd15.safetensors"
    save_file({k: v.contiguous() for k, v in sd1_to_ldm(original).items()}, str(ckpt))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    monkeypatch.setattr("huggingface_hub.snapshot_download", no_network)

    record = mm.install(ckpt)
    assert (record.type, record.base, record.format) == ("main", "sd1", "checkpoint")
    pipe = mm.load_main(record)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder"):
        _same_weights(getattr(original, part), getattr(pipe, part))
    assert pipe.tokenizer("a photo of an astronaut riding a horse").input_ids == ASTRONAUT
    image = pipe(
        "a red circle",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


def test_diffusers_folder_installs_and_loads(mm, tmp_path, capsys):
    """… with no loading bars (the CLI and server report progress their own way), and the
    libraries' bar settings as they were afterwards."""
    from diffusers.utils import logging as diffusers_logging

    original = build_pipeline("sd1", tmp_path / "tok")
    original.save_pretrained(tmp_path / "tiny-sd1")
    record = mm.install(tmp_path / "tiny-sd1", name="tiny")
    assert (record.type, record.base, record.format) == ("main", "sd1", "diffusers")
    capsys.readouterr()
    pipe = mm.load_main("tiny")
    assert "Loading pipeline components" not in capsys.readouterr().err
    assert diffusers_logging.is_progress_bar_enabled()
    _same_weights(original.unet, pipe.unet)
    prompt = "a red circle on a white background"
    gen = torch.Generator().manual_seed(0)
    expected = original(
        prompt, num_inference_steps=2, height=64, width=64, generator=gen, output_type="np"
    ).images
    gen = torch.Generator().manual_seed(0)
    got = pipe(
        prompt, num_inference_steps=2, height=64, width=64, generator=gen, output_type="np"
    ).images
    assert torch.equal(torch.from_numpy(expected), torch.from_numpy(got))


def test_checkpoint_with_missing_parts_is_refused(mm, tmp_path, sd1_original):
    ldm = sd1_to_ldm(sd1_original)
    state = {k: v.contiguous() for k, v in ldm.items() if "first_stage" not in k}
    save_file(state, str(tmp_path / "novae.safetensors"))
    record = mm.install(tmp_path / "novae.safetensors")
    with pytest.raises(ModelError, match="holds no VAE"):
        mm.load_main(record)


@pytest.mark.parametrize(("base", "to_ldm"), [("sd2", sd2_to_ldm), ("sdxl", sdxl_to_ldm)])
def test_single_file_sd2_and_sdxl_load_the_same_weights(mm, tmp_path, base, to_ldm):
    original = build_pipeline(base, tmp_path / "orig")
    ckpt = tmp_path / f"tiny-{base}.safetensors"
    save_file({k: v.contiguous() for k, v in to_ldm(original).items()}, str(ckpt))
    record = mm.install(ckpt)
    assert (record.type, record.base, record.format) == ("main", base, "checkpoint")
    pipe = mm.load_main(record)
    parts = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if base == "sdxl" else [])
    for part in parts:
        _same_weights(getattr(original, part), getattr(pipe, part))
    assert pipe.unet.config.cross_attention_dim == original.unet.config.cross_attention_dim
