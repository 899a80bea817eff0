"""Parity with diffusers' `load_textual_inversion` (the reference loader, which adds tokens to
the tokenizer and rows to the encoder) on each format it reads: the same prompt embeddings
within 1e-6, positive and negative, on a copy of each tiny pipeline."""

from __future__ import annotations

import copy

import pytest
import torch

from loraworks.embeddings import read_embedding
from loraworks.generation.conditioning import encode_prompt, is_sdxl
from tests.embeddings.producers import write_a1111, write_diffusers, write_kohya
from tests.embeddings.truth import words

TOKEN = "zq-shape"
PROMPT = f"a {TOKEN} on a white background"
NEGATIVE = f"blurry, {TOKEN}"


def _vectors(n: int, width: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(n + width)) * 0.02


WRITERS = {
    "a1111": lambda p, v: write_a1111(p / f"{TOKEN}.pt", v),
    "kohya": lambda p, v: write_kohya(p / f"{TOKEN}.safetensors", v),
    "diffusers": lambda p, v: write_diffusers(p / f"{TOKEN}.safetensors", TOKEN, v),
}


def _theirs(pipe, path):
    """diffusers' embeddings of PROMPT/NEGATIVE after `load_textual_inversion`."""
    pipe = copy.deepcopy(pipe)
    pipe.load_textual_inversion(str(path), token=TOKEN)
    out = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    return torch.cat([out[1], out[0]])


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("base", ["sd1", "sd2"])
@pytest.mark.parametrize("count", [1, 3])
def test_same_prompt_embeddings_as_load_textual_inversion(pipes, tmp_path, base, fmt, count):
    pipe = pipes[base]
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    path = WRITERS[fmt](tmp_path, _vectors(count, width))
    want = _theirs(pipe, path)
    ours = encode_prompt(pipe, PROMPT, NEGATIVE, True, 64, 64, words(read_embedding(path)))
    torch.testing.assert_close(ours.embeds, want, atol=1e-6, rtol=0)


def test_sdxl_clip_l_and_clip_g_as_diffusers_loads_them_per_encoder(pipes, tmp_path):
    """SDXL files: diffusers' documented way is one call per encoder with its half."""
    pipe = pipes["sdxl"]
    halves = {"clip_l": _vectors(2, 768), "clip_g": _vectors(2, 1280)}
    path = write_kohya(tmp_path / f"{TOKEN}.safetensors", halves)
    theirs = copy.deepcopy(pipe)
    theirs.tokenizer_2 = copy.deepcopy(theirs.tokenizer_2)  # the fixture shares one tokenizer
    theirs.load_textual_inversion(
        halves["clip_l"], token=TOKEN, text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer
    )
    theirs.load_textual_inversion(
        halves["clip_g"],
        token=TOKEN,
        text_encoder=theirs.text_encoder_2,
        tokenizer=theirs.tokenizer_2,
    )
    embeds, negative, pooled, negative_pooled = theirs.encode_prompt(
        PROMPT, negative_prompt=NEGATIVE, device="cpu", do_classifier_free_guidance=True
    )
    assert is_sdxl(pipe)
    ours = encode_prompt(pipe, PROMPT, NEGATIVE, True, 64, 64, words(read_embedding(path)))
    torch.testing.assert_close(ours.embeds, torch.cat([negative, embeds]), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        ours.added["text_embeds"], torch.cat([negative_pooled, pooled]), atol=1e-6, rtol=0
    )
