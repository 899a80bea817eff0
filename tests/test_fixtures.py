"""The fixtures must match the real architectures' published facts, or every LoRA test built
on them proves nothing."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.models import BASES, build_components, build_tokenizer

_PUBLISHED_TRANSFORMER_BLOCKS = {"sd1": 16, "sd2": 16, "sdxl": 70}
_CROSS_ATTENTION = {"sd1": 768, "sd2": 1024, "sdxl": 2048}
_TE_HIDDEN = {"sd1": (768,), "sd2": (1024,), "sdxl": (768, 1280)}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _transformer_blocks(unet: torch.nn.Module) -> int:
    return sum(type(m).__name__ == "BasicTransformerBlock" for m in unet.modules())


def _to_k_widths(unet: torch.nn.Module) -> set[int]:
    return {m.in_features for n, m in unet.named_modules() if n.endswith("attn2.to_k")}


@pytest.fixture(scope="module")
def full_on_meta():
    with torch.device("meta"):
        return {b: build_components(b, "full") for b in BASES}


def test_sd15_parameter_counts(full_on_meta):
    c = full_on_meta["sd1"]
    assert _count(c.unet) == 859_520_964
    assert _count(c.text_encoder) == 123_060_480


def test_sd2_text_encoder_is_openclip_h_penultimate(full_on_meta):
    cfg = full_on_meta["sd2"].text_encoder.config
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (1024, 23)


def test_sdxl_unet_and_text_encoders(full_on_meta):
    c = full_on_meta["sdxl"]
    assert c.unet.config.addition_embed_type == "text_time"
    assert _count(c.unet) == 2_567_463_684  # published SDXL base UNet size
    assert type(c.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert c.text_encoder_2.config.hidden_size == 1280


@pytest.mark.parametrize("base", BASES)
def test_full_transformer_blocks_and_cross_attention(full_on_meta, base):
    unet = full_on_meta[base].unet
    assert _transformer_blocks(unet) == _PUBLISHED_TRANSFORMER_BLOCKS[base]
    assert _to_k_widths(unet) == {_CROSS_ATTENTION[base]}


@pytest.mark.parametrize("base", BASES)
def test_tiny_keeps_decisive_widths_and_names(full_on_meta, base):
    tiny = build_components(base, "tiny")
    full = full_on_meta[base]
    assert _to_k_widths(tiny.unet) == {_CROSS_ATTENTION[base]}
    hidden = tuple(
        te.config.hidden_size for te in (tiny.text_encoder, tiny.text_encoder_2) if te is not None
    )
    assert hidden == _TE_HIDDEN[base]
    full_names = {n for n, _ in full.unet.named_modules()}
    tiny_names = {n for n, _ in tiny.unet.named_modules()}
    assert tiny_names <= full_names  # tiny is the real layout with fewer layers
    assert _count(tiny.unet) < 10_000_000


def test_tiny_is_deterministic():
    a = build_components("sd1", "tiny", seed=3).unet.state_dict()
    b = build_components("sd1", "tiny", seed=3).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_from_local_files(tmp_path):
    tok = build_tokenizer(tmp_path, ("red", "circle"))
    ids = tok("a red circle").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "red</w>", "circle</w>"]
