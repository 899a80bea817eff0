"""Acceptance: an embedding made of the encoder's own rows for "red circle" gives the pixels
"red circle" gives, in the prompt, in the negative prompt, with emphasis, by `embedding:name`,
after BREAK and beyond 77 tokens, on tiny SD1, SD2 and SDXL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loraworks.generation.conditioning import encode_prompt
from loraworks.generation.render import RenderSettings, render
from tests.embeddings.truth import PHRASE, TRIGGER, phrase_embedding, words
from tests.fixtures.models import BASES

BACKGROUND = "a {} on a white background"


def _pixels(pipe, prompt: str, negative: str | None, used=None) -> np.ndarray:
    settings = RenderSettings(
        prompt=prompt,
        negative_prompt=negative,
        width=64,
        height=64,
        steps=2,
        cfg=7.5,
        scheduler="euler",
        seed=3,
        embeddings=used,
    )
    return np.asarray(render(pipe, settings).image)


CASES = {
    "prompt": (BACKGROUND, "blurry"),
    "negative": ("a blue square", BACKGROUND),
    "emphasis": ("a ({}:1.3) on a white background", "blurry"),
    "negative emphasis": ("a blue square", "(({}:1.2)), on white"),
    "break": ("a blue square BREAK " + BACKGROUND, "blurry"),
}


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("case", CASES)
def test_a_trigger_gives_the_pixels_of_the_phrase_it_was_made_of(pipes, base, case):
    pipe = pipes[base]
    used = words(phrase_embedding(pipe))
    prompt, negative = CASES[case]

    def filled(text: str, word: str) -> str:
        return text.format(word) if "{}" in text else text

    want = _pixels(pipe, filled(prompt, PHRASE), filled(negative, PHRASE))
    got = _pixels(pipe, filled(prompt, TRIGGER), filled(negative, TRIGGER), used)
    np.testing.assert_array_equal(got, want)
    without = _pixels(pipe, filled(prompt, "thing"), filled(negative, "thing"))
    assert not np.array_equal(got, without)  # the phrase matters to the image


@pytest.mark.parametrize("base", BASES)
def test_embedding_name_form_and_case_reach_the_same_embedding(pipes, base):
    pipe = pipes[base]
    used = words(phrase_embedding(pipe))
    want = encode_prompt(pipe, BACKGROUND.format(PHRASE), "blurry", True, 64, 64)
    for written in (f"embedding:{TRIGGER}", f"embedding:{TRIGGER}.pt", TRIGGER.upper()):
        got = encode_prompt(pipe, BACKGROUND.format(written), "blurry", True, 64, 64, used)
        assert torch.equal(got.embeds, want.embeds), written
        if got.added is not None:
            assert torch.equal(got.added["text_embeds"], want.added["text_embeds"]), written


@pytest.mark.parametrize("base", BASES)
def test_beyond_77_tokens_and_across_rows(pipes, base):
    """A long prompt whose uses of the trigger fall in the first, second and third rows (one
    straddling a row end), positive and negative: the same embeddings as the phrase."""
    pipe = pipes[base]
    used = words(phrase_embedding(pipe))
    long = ", ".join([BACKGROUND] * 12)
    want = encode_prompt(
        pipe, long.format(*[PHRASE] * 12), long.format(*[PHRASE] * 12), True, 64, 64
    )
    text = long.format(*[TRIGGER] * 12)
    got = encode_prompt(pipe, text, text, True, 64, 64, used)
    assert got.embeds.shape[1] > 77 * 2
    assert torch.equal(got.embeds, want.embeds)
