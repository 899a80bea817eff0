"""Settings resolution without running a model: LCM preset, config defaults, weights,
trigger words, request validation."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from loraworks.generation import GenerateRequest
from loraworks.generation.presets import StackEntry, resolve, with_trigger_words
from loraworks.models.config import Config
from tests.generation.conftest import fake_record

MAIN = fake_record("main", "main")
LCM = fake_record("lcm", fewstep="lcm")
STYLE = fake_record("style", default_weight=0.9)
PLAIN = fake_record("plain")


def _resolve(stack, config=None, **kw):
    request = GenerateRequest(model="main", prompt="a cat", **kw)
    return resolve(request, "a cat", MAIN, stack, config or Config())


def test_no_lcm_uses_the_config_generation_defaults():
    generation = {"steps": 12, "cfg": 5.5, "scheduler": "ddim", "width": 640, "height": 384}
    config = Config.model_validate({"generation": generation})
    r = _resolve([StackEntry(STYLE, None), StackEntry(PLAIN, None)], config, seed=1)
    s = r.settings
    assert (s.steps, s.cfg, s.scheduler, s.width, s.height, s.seed) == (
        12,
        5.5,
        "ddim",
        640,
        384,
        1,
    )
    unset = _resolve([], seed=1).settings  # 0: the model's native size, filled once it is loaded
    assert (unset.width, unset.height) == (0, 0)
    assert [a.weight for a in r.loras] == [0.9, 0.75]
    assert r.fewstep == "none" and r.warnings == []


def test_lcm_lora_fills_unset_fields_from_the_lcm_section():
    config = Config.model_validate({"lcm": {"steps": 6, "lcm_lora_weight": 0.3}})
    r = _resolve([StackEntry(LCM, None), StackEntry(STYLE, None), StackEntry(PLAIN, 1.0)], config)
    assert (r.settings.scheduler, r.settings.steps, r.settings.cfg) == ("lcm", 6, 1.0)
    assert [a.weight for a in r.loras] == [0.3, 0.45, 1.0]
    assert r.fewstep == "lcm" and r.warnings == []


def test_explicit_fields_win_over_the_lcm_preset_with_a_warning():
    r = _resolve([StackEntry(LCM, 1.0)], steps=30, cfg=7.0)
    assert (r.settings.scheduler, r.settings.steps, r.settings.cfg) == ("lcm", 30, 7.0)
    assert len(r.warnings) == 1 and "30 steps" in r.warnings[0] and "CFG 7" in r.warnings[0]


def test_preset_lcm_without_an_lcm_lora_warns():
    r = _resolve([], preset="lcm")
    assert (r.settings.scheduler, r.settings.steps, r.settings.cfg) == ("lcm", 4, 1.0)
    assert "without a lcm LoRA" in r.warnings[0]


def test_a_negative_prompt_at_cfg_1_warns_that_it_has_no_effect():
    r = _resolve([StackEntry(LCM, None)], negative_prompt="blurry")
    assert r.settings.cfg == 1.0 and r.settings.negative_prompt == "blurry"
    assert len(r.warnings) == 1 and "negative prompt has no effect at CFG 1" in r.warnings[0]
    assert _resolve([StackEntry(LCM, None)], negative_prompt="blurry", cfg=1.5).warnings == []
    assert _resolve([StackEntry(LCM, None)]).warnings == []  # no negative prompt: nothing to say


def test_trigger_words_are_appended_once_and_only_when_absent():
    tagged = fake_record("t", trigger_words=["ink style", "Cat", "sketch"])
    assert with_trigger_words("a cat", [StackEntry(tagged, None)]) == "a cat, ink style, sketch"
    assert with_trigger_words("", [StackEntry(tagged, None)]) == "ink style, Cat, sketch"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 500}, "multiple of 8"),
        ({"steps": 0}, "greater than or equal to 1"),
        ({"prompt": "x" * 5000}, "at most 4000 characters"),
        ({"scheduler": "heun"}, "'euler'"),
        ({"strength": 0.5}, "strength only applies with an init_image"),
        ({"loras": [{"name": "a", "weight": {"unet": 1, "vae": 1}}]}, "vae"),
    ],
)
def test_request_validation_messages(fields, message):
    with pytest.raises(ValidationError, match=message):
        GenerateRequest(**{"model": "m", "prompt": "p", **fields})


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (math.nan, "ink: weight nan is not finite"),
        (math.inf, "ink: weight inf is not finite"),
        (True, "ink: weight must be a number or a dict, not True"),
        (
            {"unet": 1, "clip": 1},
            "ink: unknown component 'clip' in weight (use unet, text_encoder, text_encoder_2; "
            "options: block_weights, start, stop)",
        ),
        (
            {"text_encoder": math.nan},
            "ink: weight for 'text_encoder' must be a finite number, not nan",
        ),
    ],
)
def test_a_bad_lora_weight_is_refused_by_the_request_with_the_engines_message(weight, message):
    """The request checks a weight with the engine's own rule, so it is refused before the
    request is accepted (a 422, one CLI line), not when the patcher meets it."""
    with pytest.raises(ValidationError) as err:
        GenerateRequest(model="m", prompt="p", loras=[{"name": "ink", "weight": weight}])
    [error] = err.value.errors()
    assert error["loc"] == ("loras", 0, "weight") and error["msg"] == f"Value error, {message}"


def test_a_request_weight_travels_in_its_one_form():
    request = GenerateRequest(
        model="m",
        prompt="p",
        loras=[{"name": "a", "weight": {"unet": 1}}, {"name": "b", "weight": -2}, {"name": "c"}],
    )
    weights = [spec.weight for spec in request.loras]
    assert weights == [{"unet": 1.0, "text_encoder": 0.0, "text_encoder_2": 0.0}, -2.0, None]
    r = _resolve([StackEntry(PLAIN, weights[0]), StackEntry(STYLE, weights[1])])
    assert r.loras[0].weight is weights[0] and r.loras[1].weight is weights[1]
