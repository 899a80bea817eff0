"""Key conversion on real key layouts kept as data (tests/lora/data/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from loraworks.lora import LoRAFormatError, load_lora
from loraworks.lora.keys import (
    diffusers_to_sgm,
    flatten,
    sgm_to_diffusers,
    text_encoder_candidates,
    unet_layout,
    unflatten,
)
from loraworks.models.fewstep import has_lcm_layout
from tests.fixtures.models import build_components, unet_config
from tests.lora_parity.sgm import sdxl_sgm_name

DATA = Path(__file__).parent / "data"


def _lines(name):
    return [x for x in (DATA / name).read_text().splitlines() if x and not x.startswith("#")]


@pytest.fixture(scope="module")
def full_unet_modules():
    """Linear/Conv module names of the full-size UNets, built on the meta device (no memory)."""
    out = {}
    for base in ("sd1", "sdxl"):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**unet_config(base, "full"))
        out[base] = {n for n, m in unet.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    return out


def test_kohya_sdxl_names_map_one_to_one_onto_the_diffusers_unet(full_unet_modules):
    names = _lines("kohya_sdxl_unet_modules.txt")
    mapped = {sgm_to_diffusers(unflatten(n[len("lora_unet_") :])) for n in names}
    assert len(mapped) == len(names)
    assert mapped == full_unet_modules["sdxl"]
    # and back, through the tests' own SDXL table
    for name in full_unet_modules["sdxl"]:
        assert "lora_unet_" + flatten(sdxl_sgm_name(name)) in names


def test_lcm_lora_names_resolve_on_sd1(full_unet_modules):
    for name in _lines("lcm_lora_sdv1_5_keys.txt"):
        assert unflatten(name[len("lora_unet_") :]) in full_unet_modules["sd1"], name


def test_lcm_layout_is_recognised():
    """The published LCM-LoRA's module list (whole UNet, no text encoder, no kohya training
    facts) is an LCM-LoRA by layout alone; a text-encoder layer makes it a concept LoRA."""
    targets = [
        "unet." + unflatten(n[len("lora_unet_") :]) for n in _lines("lcm_lora_sdv1_5_keys.txt")
    ]
    assert has_lcm_layout(targets, {})
    te = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    assert not has_lcm_layout([*targets, te], {})
    assert not has_lcm_layout(targets, {"ss_network_module": "networks.lora"})


@pytest.mark.parametrize(
    ("flat", "dotted"),
    [
        ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
        ("mid_block_resnets_1_time_emb_proj", "mid_block.resnets.1.time_emb_proj"),
        ("up_blocks_1_resnets_2_conv_shortcut", "up_blocks.1.resnets.2.conv_shortcut"),
        ("text_model_encoder_layers_11_self_attn_q_proj", "text_model.encoder.layers.11.self_attn.q_proj"),  # noqa: E501
        ("text_model_encoder_layers_0_mlp_fc1", "text_model.encoder.layers.0.mlp.fc1"),
        ("input_blocks_4_1_transformer_blocks_1_ff_net_0_proj",
         "input_blocks.4.1.transformer_blocks.1.ff.net.0.proj"),
        ("output_blocks_0_0_emb_layers_1", "output_blocks.0.0.emb_layers.1"),
        ("time_embedding_linear_1", "time_embedding.linear_1"),
        ("time_embed_0", "time_embed.0"),
    ],
)  # fmt: skip
def test_unflatten(flat, dotted):
    assert unflatten(flat) == dotted


@pytest.mark.parametrize(
    ("sgm", "diffusers"),
    [
        ("input_blocks.0.0", "conv_in"),
        ("input_blocks.1.0.in_layers.2", "down_blocks.0.resnets.0.conv1"),
        ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
        ("input_blocks.4.1.proj_in", "down_blocks.1.attentions.0.proj_in"),
        ("input_blocks.8.0.skip_connection", "down_blocks.2.resnets.1.conv_shortcut"),
        ("middle_block.0.emb_layers.1", "mid_block.resnets.0.time_emb_proj"),
        ("middle_block.1.transformer_blocks.3.attn2.to_k", "mid_block.attentions.0.transformer_blocks.3.attn2.to_k"),  # noqa: E501
        ("middle_block.2.out_layers.3", "mid_block.resnets.1.conv2"),
        ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"),
        ("output_blocks.5.1.transformer_blocks.1.ff.net.2", "up_blocks.1.attentions.2.transformer_blocks.1.ff.net.2"),  # noqa: E501
        ("output_blocks.8.0.in_layers.2", "up_blocks.2.resnets.2.conv1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("label_emb.0.0", "add_embedding.linear_1"),
        ("out.2", "conv_out"),
    ],
)  # fmt: skip
def test_sgm_to_diffusers(sgm, diffusers):
    assert sgm_to_diffusers(sgm) == diffusers


def test_diffusers_to_sgm_writes_kohyas_sdxl_names(full_unet_modules):
    """Every module of the SDXL UNet, written back, is named as kohya's SDXL files name it."""
    names = set(_lines("kohya_sdxl_unet_modules.txt"))
    assert {"lora_unet_" + flatten(diffusers_to_sgm(n)) for n in full_unet_modules["sdxl"]} == names


def test_diffusers_to_sgm_inverts_the_reader_on_sd1(full_unet_modules):
    with torch.device("meta"):
        layout = unet_layout(UNet2DConditionModel(**unet_config("sd1", "full")).config)
    for name in full_unet_modules["sd1"]:
        assert sgm_to_diffusers(diffusers_to_sgm(name, layout)) == name
    assert diffusers_to_sgm("up_blocks.0.upsamplers.0.conv", layout) == "output_blocks.2.1.conv"
    with pytest.raises(LoRAFormatError, match="to an sgm module"):
        diffusers_to_sgm("down_blocks.0.bogus.0.conv1")


def test_sd1_upsampler_without_attention():
    assert sgm_to_diffusers("output_blocks.2.1.conv") == "up_blocks.0.upsamplers.0.conv"


def test_bad_sgm_name():
    with pytest.raises(LoRAFormatError, match="resnet sub-module"):
        sgm_to_diffusers("input_blocks.1.0.bogus_layer")


def test_text_encoder_candidates():
    assert text_encoder_candidates("text_model.encoder.layers.0.mlp.fc1") == [
        "text_model.encoder.layers.0.mlp.fc1",
        "encoder.layers.0.mlp.fc1",
    ]
    assert text_encoder_candidates("encoder.layers.0.mlp.fc1")[1].startswith("text_model.")


def test_text_encoder_paths_resolve_with_and_without_text_model_level():
    """Whatever transformers does, a file naming text_model (or not) patches the same module."""
    from loraworks.lora import apply_loras

    c = build_components("sd1")
    te = c.text_encoder
    names = [n for n, m in te.named_modules() if n.endswith("layers.0.self_attn.q_proj")]
    (name,) = names
    bare = name.removeprefix("text_model.")
    for spelled in ("text_model." + bare, bare):
        sd = {
            f"lora_te_{flatten(spelled)}.lora_down.weight": torch.ones(1, 768),
            f"lora_te_{flatten(spelled)}.lora_up.weight": torch.ones(768, 1),
        }
        lora = load_lora((sd, {}))
        before = te.get_submodule(name).weight.detach().clone()
        with apply_loras({"text_encoder": te}, [(lora, 1.0)]) as report:
            assert not report.unmatched
            torch.testing.assert_close(te.get_submodule(name).weight, before + 1.0)
