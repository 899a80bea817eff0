"""Installed embeddings through `generate` and `recall` on tiny SD1/SD2/SDXL models: the phrase's
pixels by trigger in prompt and negative, no leak (pixels, tokenizer length, text-encoder
weights), recipes and recall, the base rules, collisions and too many uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from loraworks.embeddings import (
    MAX_USES,
    EmbeddingBaseMismatch,
    TooManyEmbeddings,
    read_embedding,
)
from loraworks.generation import generate, recall
from loraworks.generation.api import check_request
from loraworks.generation.cache import cache_for
from loraworks.generation.conditioning import encode_prompt
from tests.embeddings.producers import write_a1111, write_kohya
from tests.embeddings.truth import PHRASE, phrase_rows, words
from tests.fixtures.models import BASES
from tests.generation.conftest import pipeline_weights, tiny_request

BACKGROUND = "a {} on a white background"


def _pipe(mm, base: str):
    return cache_for(mm).model(mm.get(f"tiny-{base}", type="main")).pipe


def _install(mm, base: str, tmp_path, stem: str | None = None):
    """The phrase's rows of `base`'s encoders as a kohya file named `stem` (its trigger)."""
    stem = stem or f"zq-{base}"
    rows = phrase_rows(_pipe(mm, base))
    vectors = rows if base == "sdxl" else rows["*"]
    return mm.install(write_kohya(tmp_path / f"{stem}.safetensors", vectors))


def _pixels(result) -> np.ndarray:
    return np.asarray(Image.open(result.images[0]))


@pytest.mark.parametrize("base", BASES)
def test_installed_trigger_gives_the_phrase_pixels_and_leaves_nothing_behind(mm, tmp_path, base):
    record = _install(mm, base, tmp_path)
    trigger = record.trigger_words[0]
    pipe = _pipe(mm, base)
    vocab, weights = len(pipe.tokenizer), pipeline_weights(pipe)

    def run(word: str):
        prompt, negative = BACKGROUND.format(word), f"blurry, {word}"
        return generate(
            tiny_request(base, prompt=prompt, negative_prompt=negative, cfg=7.5), manager=mm
        )

    before = _pixels(run(PHRASE))
    used = run(trigger)
    np.testing.assert_array_equal(_pixels(used), before)
    assert _pixels(run("thing")).tolist() != before.tolist()  # the phrase matters
    np.testing.assert_array_equal(_pixels(run(PHRASE)), before)  # no leak
    pipe = _pipe(mm, base)
    assert len(pipe.tokenizer) == vocab
    after = pipeline_weights(pipe)
    assert all(torch.equal(after[k], weights[k]) for k in weights)
    assert used.recipe["embeddings"] == [
        {
            "name": record.name,
            "key": record.key,
            "hash": record.hash,
            "base": base,
            "hashes": record.hashes,  # A1111's TI hashes (tests/models/test_autohashes.py)
            "used_in": ["prompt", "negative"],
        }
    ]
    again = recall(used.images[0], manager=mm)
    np.testing.assert_array_equal(_pixels(again), before)
    assert again.recipe["embeddings"] == used.recipe["embeddings"]


def test_an_sd2_embedding_on_sd1_is_refused_naming_both_bases(mm, tmp_path):
    record = _install(mm, "sd2", tmp_path, "sd2-only")
    images = mm.images.count()
    with pytest.raises(EmbeddingBaseMismatch, match=r"'sd2-only' is for SD2 .* 'tiny-sd1' is SD1"):
        generate(tiny_request("sd1", prompt=f"a {record.name}"), manager=mm)
    with pytest.raises(EmbeddingBaseMismatch):
        generate(tiny_request("sd1", negative_prompt="embedding:sd2-only", cfg=2), manager=mm)
    with pytest.raises(EmbeddingBaseMismatch):  # the server's queue refuses it before queueing
        check_request(tiny_request("sd1", prompt="sd2-only"), mm)
    assert mm.images.count() == images


def test_an_sd1_embedding_on_sdxl_reaches_clip_l_only_with_a_warning(mm, tmp_path):
    """Truth: CLIP-L's half is the phrase's, CLIP-G's the prompt without the trigger."""
    pipe = _pipe(mm, "sdxl")
    rows = phrase_rows(pipe)["clip_l"]
    record = mm.install(write_a1111(tmp_path / "l-only.pt", rows))
    assert record.base == "sd1" and "sdxl" in record.compatible_bases
    used = words(read_embedding(record.path))
    got = encode_prompt(pipe, BACKGROUND.format("l-only"), None, False, 64, 64, used)
    phrase = encode_prompt(pipe, BACKGROUND.format(PHRASE), None, False, 64, 64)
    without = encode_prompt(pipe, BACKGROUND.format("").replace("  ", " "), None, False, 64, 64)
    assert torch.equal(got.embeds[..., :768], phrase.embeds[..., :768])
    assert torch.equal(got.embeds[..., 768:], without.embeds[..., 768:])
    result = generate(tiny_request("sdxl", prompt=BACKGROUND.format("l-only")), manager=mm)
    assert any("CLIP-L encoder only" in w for w in result.warnings)


def test_too_many_uses_in_one_prompt_are_refused_before_any_work(mm, tmp_path):
    record = _install(mm, "sd1", tmp_path, "qz")
    images = mm.images.count()
    prompt = ",".join([record.trigger_words[0]] * 1000)  # 1,000 uses within the 4,000 characters
    with pytest.raises(TooManyEmbeddings, match=f"1000 times; at most {MAX_USES}"):
        generate(tiny_request("sd1", prompt=prompt), manager=mm)
    assert mm.images.count() == images


def test_a_trigger_that_is_a_word_or_another_embeddings_warns(mm, tmp_path):
    first = _install(mm, "sd1", tmp_path, "shared-a")
    second = _install(mm, "sd1", tmp_path / "b", "shared-b")
    mm.update(first.key, trigger_words=["zqword"])
    mm.update(second.key, trigger_words=["zqword", "x"])  # the tiny vocabulary's words: letters
    result = generate(tiny_request("sd1", prompt="a zqword, x"), manager=mm)
    said = "\n".join(result.warnings)
    assert "'zqword' is claimed by several embeddings (shared-a, shared-b)" in said
    assert "means 'shared-a'" in said  # installed first
    assert "trigger 'x' is also a word" in said
    assert "trigger 'zqword' is also" not in said  # not one token of the vocabulary
