"""The single-file loader on the published SD1.5 / SD2 / SDXL architectures, without the
gigabytes: models are built on the meta device (shapes only), written in the LDM layout, and the
configs read back from those shapes must equal the published ones; the converted key sets must
equal diffusers' own."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from loraworks.models.singlefile import template, text_encoder_config, unet_config, vae_config
from tests.fixtures.models import _VAE_FULL
from tests.fixtures.models import text_encoder_config as fixture_te_config
from tests.fixtures.models import unet_config as fixture_unet_config
from tests.models.ldm_layout import clip_l_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

UNET_FIELDS = (
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
    "use_linear_projection",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


def _listify(value):
    return list(value) if isinstance(value, tuple | list) else value


@pytest.mark.parametrize("base", ["sd1", "sd2", "sdxl"])
def test_full_unet_config_and_keys_from_shapes(base):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**fixture_unet_config(base, "full"))
    ldm = unet_to_ldm(unet)
    if base == "sdxl":  # the pooled CLIP-G width the SDXL conditioning is built from
        ldm["conditioner.embedders.1.model.text_projection"] = torch.empty(
            1280, 1280, device="meta"
        )
    cfg = unet_config(ldm, template(base)["unet"])
    for field in UNET_FIELDS:
        assert _listify(cfg[field]) == _listify(unet.config[field]), field
    depth = unet.config.transformer_layers_per_block
    expected_depth = [depth] * 4 if isinstance(depth, int) else list(depth)
    assert cfg["transformer_layers_per_block"] == expected_depth
    assert _listify(cfg["attention_head_dim"]) == _listify(
        unet.config.attention_head_dim
        if isinstance(unet.config.attention_head_dim, list | tuple)
        else [unet.config.attention_head_dim] * len(unet.config.block_out_channels)
    )
    converted = convert_ldm_unet_checkpoint(ldm, cfg)
    assert set(converted) == set(unet.state_dict())


def test_full_vae_config_and_keys_from_shapes():
    with torch.device("meta"):
        vae = AutoencoderKL(**_VAE_FULL)
    ldm = vae_to_ldm(vae)
    cfg = vae_config(ldm, template("sd1")["vae"])
    for field in ("block_out_channels", "layers_per_block", "latent_channels"):
        assert _listify(cfg[field]) == _listify(vae.config[field]), field
    assert set(convert_ldm_vae_checkpoint(ldm, cfg)) == set(vae.state_dict())


@pytest.mark.parametrize(
    ("base", "name", "prefix", "open_clip"),
    [
        ("sd1", "text_encoder", "cond_stage_model.transformer.", False),
        ("sd2", "text_encoder", "cond_stage_model.model.", True),
        ("sdxl", "text_encoder", "conditioner.embedders.0.transformer.", False),
        ("sdxl", "text_encoder_2", "conditioner.embedders.1.model.", True),
    ],
)
def test_full_text_encoder_configs_from_shapes(base, name, prefix, open_clip):
    published = fixture_te_config("sdxl_2" if name == "text_encoder_2" else base, "full")
    cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
    with torch.device("meta"):
        model = cls(published)
    if open_clip:
        ldm = open_clip_to_ldm(model, prefix, spare_layer=base == "sd2")
    else:
        ldm = {
            k.replace("cond_stage_model.", prefix.removesuffix("transformer.")): v
            for k, v in clip_l_to_ldm(model).items()
        }
    cfg = text_encoder_config(ldm, prefix, open_clip, template(base)[name])
    for field in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "num_attention_heads",
        "max_position_embeddings",
        "hidden_act",
    ):
        assert cfg[field] == getattr(published, field), field
    if name == "text_encoder_2":
        assert cfg["projection_dim"] == published.projection_dim
