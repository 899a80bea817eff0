"""The judge reads the truth off the procedural pictures, and can be wrong when they are."""

from __future__ import annotations

import numpy as np
import pytest

from loraworks.demo.data import BASE_SHAPES, COLOURS, STAR, Label, make_set, render
from loraworks.demo.judge import NOTHING, judge


@pytest.mark.parametrize("shapes", [BASE_SHAPES, (STAR,)], ids=["base", "star"])
def test_judge_reads_dataset_pictures(shapes):
    pictures = make_set(240 * len(shapes), seed=123, shapes=shapes)
    right = [judge(im) == label for im, label in zip(pictures.images, pictures.labels, strict=True)]
    assert np.mean(right) >= 0.99


@pytest.mark.parametrize("shape", [*BASE_SHAPES, STAR])
def test_each_shape_is_told_apart(shape):
    rng = np.random.default_rng(7)
    labels = [Label(c, shape, "white") for c in COLOURS] * 25
    assert sum(judge(render(label, rng)).shape == shape for label in labels) >= 99


def test_wrong_colour_is_read_as_wrong():
    rng = np.random.default_rng(1)
    picture = render(Label("red", "circle", "black"), rng)
    swapped = picture[..., [2, 1, 0]]  # red <-> blue channels: a blue circle
    assert judge(swapped) == Label("blue", "circle", "black")
    assert judge(picture) != judge(swapped)


def test_inverted_background_and_blank_picture():
    rng = np.random.default_rng(2)
    picture = render(Label("green", "square", "white"), rng)
    blank = np.full_like(picture, 255)
    assert judge(blank).shape == NOTHING
    black = np.where(picture.sum(-1, keepdims=True) >= 3 * 250, 0, picture).astype(np.uint8)
    assert judge(black).background == "black"


def test_data_is_deterministic_and_seed_dependent():
    a, b, c = make_set(48, seed=4), make_set(48, seed=4), make_set(48, seed=5)
    assert np.array_equal(a.images, b.images) and a.labels == b.labels
    assert not np.array_equal(a.images, c.images)
    assert (
        a.captions[0]
        == f"a {a.labels[0].colour} {a.labels[0].shape} on a {a.labels[0].background} background"
    )


def test_star_captions_use_the_trigger_word():
    stars = make_set(8, seed=0, shapes=(STAR,))
    assert all("zkstar" in c and "star " not in c.replace("zkstar", "") for c in stars.captions)
