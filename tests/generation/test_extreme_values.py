"""Absurd numbers (#16): a LoRA weight of 1e6 or a flood of emphasis brackets is warned about
from the settings alone, and an image that decodes to NaN or infinity is a failure with its
reason, never a black PNG in the gallery."""

from __future__ import annotations

import pytest

from loraworks.generation import GenerationError, generate
from loraworks.generation.presets import EXTREME_WEIGHT
from tests.generation.conftest import tiny_request


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"loras": [{"name": "sd1-b", "weight": 1e6}]}, "LoRA 'sd1-b' weight 1e+06 is far outside"),
        (
            {"loras": [{"name": "sd1-b", "weight": {"unet": -40}}]},
            "LoRA 'sd1-b' weight 40 is far outside",
        ),
        # 1.1^15 = 4.18: fifteen nested brackets; (word:5) directly
        ({"prompt": "(" * 15 + "red" + ")" * 15}, "the prompt's emphasis reaches ×4.18"),
        ({"negative_prompt": "(blur:5)", "cfg": 2.0}, "the negative prompt's emphasis reaches ×5"),
    ],
)
def test_absurd_weights_and_emphasis_floods_are_warned_about(mm, fields, expected):
    warnings = generate(tiny_request("sd1", **fields), manager=mm).warnings
    assert any(w.startswith(expected) for w in warnings), warnings


def test_usual_weights_and_emphasis_are_not_warned_about(mm):
    request = tiny_request(
        "sd1",
        prompt="((red)) (circle:1.5)",
        loras=[{"name": "sd1-b", "weight": EXTREME_WEIGHT}],
    )
    result = generate(request, manager=mm)
    assert not any("far outside" in w or "emphasis" in w for w in result.warnings)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_image_that_decodes_non_finite_fails_with_the_reason_and_saves_nothing(mm, bad):
    """The VAE's output is made non-finite by a hook (as an fp16 overflow or a 1e6 weight
    makes it): the generation fails saying so, no PNG is written or recorded."""
    from loraworks.generation.cache import cache_for

    vae = cache_for(mm).model(mm.get("tiny-sd1", type="main")).pipe.vae

    def poison(_module, _args, output):
        output[0].view(-1)[0] = bad
        return output

    before = (mm.images.count(), sorted(mm.paths.outputs.rglob("*.png")))
    hook = vae.decoder.register_forward_hook(lambda m, a, out: poison(m, a, (out,))[0])
    try:
        with pytest.raises(GenerationError, match=r"non-finite values .* not saved"):
            generate(tiny_request("sd1"), manager=mm)
    finally:
        hook.remove()
    assert (mm.images.count(), sorted(mm.paths.outputs.rglob("*.png"))) == before
