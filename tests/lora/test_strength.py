"""A LoRA's weight: one check and one form, the same for the request boundary and the patcher."""

from __future__ import annotations

import math
import re

import pytest

from loraworks.lora import LoRAError, apply_loras, load_lora, normalise_strength
from tests.fixtures.models import build_components
from tests.lora.util import assert_bit_exact, kohya_lora, snapshot

NOT_PATCHED = {"text_encoder": 0.0, "text_encoder_2": 0.0}


@pytest.mark.parametrize(
    ("value", "form"),
    [
        (0.8, 0.8),
        (-2, -2.0),  # an int is a float
        ({"unet": 1}, {"unet": 1.0, **NOT_PATCHED}),  # a component left out: 0, not patched
        (
            {"text_encoder_2": 0.5, "unet": 1.25, "text_encoder": 0.5},
            {"unet": 1.25, "text_encoder": 0.5, "text_encoder_2": 0.5},
        ),
    ],
)
def test_one_form_for_equal_weights(value, form):
    got = normalise_strength(value, "ink")
    assert got == form and type(got) is type(form)
    assert all(type(v) is float for v in (got.values() if isinstance(got, dict) else [got]))
    assert normalise_strength(got, "ink") == got  # a checked weight passes again unchanged


@pytest.mark.parametrize(
    ("value", "form"),
    [
        ({"block_weights": "OUTD"}, {"block_weights": "OUTD"}),  # components open: the default
        (
            {"unet": 1, "block_weights": "1, 0,0.5" + ",0" * 14, "start": 2, "stop": 0.5},
            {
                "unet": 1.0,
                **NOT_PATCHED,
                "block_weights": [1.0, 0.0, 0.5] + [0.0] * 14,
                "start": 2,
                "stop": 0.5,
            },
        ),
        ({"start": 0.0, "stop": 1.0}, {"start": 0.0, "stop": 1.0}),
    ],
)
def test_options_keep_their_form(value, form):
    """A window end keeps its type (an int is a step number, a float a fraction) and a typed
    vector becomes numbers; a checked weight passes again unchanged."""
    got = normalise_strength(value, "ink")
    assert got == form
    assert [type(got.get(k)) for k in ("start", "stop")] == [
        type(form.get(k)) for k in ("start", "stop")
    ]
    assert normalise_strength(got, "ink") == got


BAD = [
    (True, "ink: weight must be a number or a dict, not True"),
    (math.nan, "ink: weight nan is not finite"),
    (-math.inf, "ink: weight -inf is not finite"),
    ("0.8", "ink: weight must be a number or a dict, not str"),
    ([0.8], "ink: weight must be a number or a dict, not list"),
    (
        {"unet": 1.0, "te": 0.5},
        "ink: unknown component 'te' in weight (use unet, text_encoder, text_encoder_2; "
        "options: block_weights, start, stop)",
    ),
    ({"unet": math.inf}, "ink: weight for 'unet' must be a finite number, not inf"),
    ({"unet": False}, "ink: weight for 'unet' must be a finite number, not False"),
    ({"unet": "1"}, "ink: weight for 'unet' must be a finite number, not '1'"),
]


@pytest.mark.parametrize(("value", "message"), BAD)
def test_bad_weights_are_refused_naming_the_lora(value, message):
    with pytest.raises(LoRAError, match=f"^{re.escape(message)}$"):
        normalise_strength(value, "ink")


@pytest.mark.parametrize(("value", "message"), BAD)
def test_the_patcher_refuses_them_alike_and_touches_nothing(value, message):
    """Python callers pass raw weights to the engine: the patcher checks with the same rule."""
    c = build_components("sd1")
    lora = load_lora((kohya_lora(c), {}), name="ink")
    snap = snapshot(c)
    with (
        pytest.raises(LoRAError, match=f"^{re.escape(message)}$"),
        apply_loras(c.as_mapping(), [(lora, value)]),
    ):
        pass
    assert_bit_exact(c, snap)
