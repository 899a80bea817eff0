"""Per-LoRA options of A1111's LoRA Block Weight extension in the prompt syntax (`lbw=`,
`start=`, `stop=`) and the step-window rule, checked against hand-counted steps."""

from __future__ import annotations

import re

import pytest

from loraworks.generation import LoRASpec, PromptSyntaxError
from loraworks.generation.prompt import format_lora_tag, parse_lora_option, parse_prompt
from loraworks.generation.windows import (
    StepWindows,
    first_stack,
    in_step_numbers,
    is_active,
    stack_at,
)

ALL3 = ("unet", "text_encoder", "text_encoder_2")
OUTD = "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0"


def every(w: float, **options) -> dict:
    return {**dict.fromkeys(ALL3, w), **options}


@pytest.mark.parametrize(
    ("tag", "weight"),
    [
        ("<lora:ink:0.8:lbw=OUTD>", every(0.8, block_weights="OUTD")),
        ("<lora:ink:1:lbw=OUTD:stop=10>", every(1.0, block_weights="OUTD", stop=10)),
        ("<lora:ink:lbw=OUTD>", {"block_weights": "OUTD"}),  # no number: the default weight
        (f"<lora:ink:lbw={OUTD}>", {"block_weights": [float(v) for v in OUTD.split(",")]}),
        ("<lora:ink:0.5:start=5:stop=10>", every(0.5, start=5, stop=10)),
        ("<lora:ink:start=0.0:stop=1.0>", {"start": 0.0, "stop": 1.0}),
        ("<lora:ink:1:lbw=ALL:step=5-10>", every(1.0, block_weights="ALL", start=5, stop=10)),
        (
            "<lyco:ink:0.5:unet=1:start=0.25>",
            {"unet": 1.0, "text_encoder": 0.5, "text_encoder_2": 0.5, "start": 0.25},
        ),
    ],
)
def test_options_in_tags(tag, weight):
    got = parse_prompt(f"a cat {tag}").loras[0].weight
    assert got == weight
    for key in ("start", "stop"):  # 5 is a step number, 5.0 would be a fraction
        assert type(got.get(key)) is type(weight.get(key))


def test_the_cli_takes_the_same_options():
    assert parse_lora_option("ink:1:lbw=OUTD") == LoRASpec(
        name="ink", weight=every(1.0, block_weights="OUTD")
    )


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora:ink:1:start=0.6:stop=0.4>", "<lora:ink:1:start=0.6:stop=0.4>: start=0.6 must "),
        ("<lora:ink:1:start=5:stop=3>", "start=5 must come before stop=3"),
        ("<lora:ink:1:stop=1.5>", "stop= must be a step number (an integer from 1) or a fr"),
        ("<lora:ink:1:lbw=1,0,1>", "lbw has 3 values; SD1/SD2 take 17 (LoRA) or 26"),
        ("<lora:ink:1:lbw=1,x" + ",0" * 15 + ">", "lbw value 'x' is not a number"),
        ("<lora:ink:1:lbw=A B>", "lbw 'A B' is neither a preset name nor a vector"),
        ("<lora:ink:1:lbw=ALL:lbw=NONE>", "unknown or repeated lbw="),
        ("<lora:ink:1:stop=soon>", "weight 'soon' is not a number"),
        ("<lora:ink:1:step=5>", "step= takes two step numbers, e.g. step=5-10"),
        ("<lora:ink:1:start=2:step=5-10>", "step= takes two step numbers"),
        ("<lora:ink:1:step=5-10:stop=3>", "unknown or repeated stop="),
    ],
)
def test_bad_options_name_the_tag(prompt, message):
    with pytest.raises(PromptSyntaxError, match=re.escape(message)):
        parse_prompt(prompt)


@pytest.mark.parametrize(
    "weight",
    [
        0.8,
        every(0.8, block_weights="OUTD", start=5, stop=10),
        every(1.0, block_weights=[1.0, 0.25] + [0.0] * 15, start=0.0, stop=1.0),
        {"unet": 1.0, "text_encoder": 0.5, "text_encoder_2": 0.5, "stop": 0.5},
        {"block_weights": "MIDD", "start": 2},
    ],
)
def test_a_written_tag_reads_back_to_the_same_weight(weight):
    tag = format_lora_tag("ink", weight)
    got = parse_prompt(tag).loras[0].weight
    assert got == weight, tag
    if isinstance(weight, dict):
        assert [type(got.get(k)) for k in ("start", "stop")] == [
            type(weight.get(k)) for k in ("start", "stop")
        ], tag


# --- windows: which steps, counted by hand ---------------------------------------------------


@pytest.mark.parametrize(
    ("window", "total", "steps"),
    [
        ({}, 4, [1, 2, 3, 4]),
        ({"start": 0.0, "stop": 1.0}, 4, [1, 2, 3, 4]),  # the whole run
        ({"start": 5, "stop": 10}, 12, [5, 6, 7, 8, 9]),  # the extension's step=5-10
        ({"stop": 10}, 12, list(range(1, 10))),  # stop=10: gone from step 10 on
        ({"start": 10}, 12, [10, 11, 12]),  # start=10: from step 10
        ({"start": 0.5}, 10, [6, 7, 8, 9, 10]),  # step k lies at (k-1)/10
        ({"stop": 0.25}, 10, [1, 2, 3]),  # 0.0, 0.1, 0.2 < 0.25
        ({"start": 0.3, "stop": 0.6}, 10, [4, 5, 6]),
        ({"start": 2, "stop": 0.5}, 10, [2, 3, 4, 5]),  # a step number and a fraction
        ({"start": 50}, 20, []),  # never opens
    ],
)
def test_active_steps(window, total, steps):
    weight = every(1.0, **window)
    assert [k for k in range(1, total + 1) if is_active(weight, k, total)] == steps
    # as step numbers (what A1111's extension reads in an infotext): the same steps
    numbers = in_step_numbers(weight, total)
    assert all(type(numbers.get(k, 0)) is int for k in ("start", "stop"))
    assert [k for k in range(1, total + 1) if is_active(numbers, k, total)] == steps


def test_fractions_become_the_steps_they_fall_on():
    assert in_step_numbers(every(1.0, start=0.5, stop=1.0), 20) == every(1.0, start=11, stop=21)
    assert in_step_numbers(every(1.0, start=0.3, stop=5), 10) == every(1.0, start=4, stop=5)


def test_the_text_part_counts_only_when_active_at_step_one():
    late, early = every(0.7, start=3), every(0.7, stop=3)
    assert stack_at([("L", late)], 1, 4) == []
    assert stack_at([("L", late)], 3, 4) == [("L", {"unet": 0.7, **dict.fromkeys(ALL3[1:], 0.0)})]
    assert stack_at([("E", early)], 1, 4) == [("E", early)]
    assert stack_at([("E", early)], 3, 4) == [("E", {"unet": 0.0, **dict.fromkeys(ALL3[1:], 0.7)})]


class _Patcher:
    def __init__(self):
        self.stacks: list[list] = []

    def set(self, stack):
        self.stacks.append(stack)


def test_after_each_step_the_next_steps_stack_and_step_ones_after_the_last():
    patcher = _Patcher()
    windows = StepWindows(patcher, [("L", every(1.0, start=2, stop=3)), ("P", 0.5)])
    assert first_stack(windows.stack) == [("P", 0.5)]
    for i in range(3):
        windows.after_step(i, 3)
    unet_only = {"unet": 1.0, "text_encoder": 0.0, "text_encoder_2": 0.0}
    assert patcher.stacks == [[("L", unet_only), ("P", 0.5)], [("P", 0.5)], [("P", 0.5)]]


def test_a1111_infotext_tags_keep_their_options():
    """A PNG from A1111 with the extension's tags: the options are kept, and a tag with
    options and no number is A1111's weight 1."""
    from loraworks.generation.foreign import read_a1111

    text = (
        "a cat <lora:ink:0.8:lbw=OUTD:stop=10> <lora:pop:lbw=INS>\n"
        "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512"
    )
    got = {lora.ref.name: lora.weight for lora in read_a1111(text).loras}
    assert got == {
        "ink": every(0.8, block_weights="OUTD", stop=10),
        "pop": every(1.0, block_weights="INS"),
    }


def test_config_presets_are_read_as_the_extension_writes_them_and_checked():
    import tomllib

    from pydantic import ValidationError

    from loraworks.models.config import DEFAULT_CONFIG_TOML, Config

    assert Config.model_validate(tomllib.loads(DEFAULT_CONFIG_TOML)).lbw_presets == {}
    text = DEFAULT_CONFIG_TOML.replace("# FACE = ", "FACE = ")
    assert Config.model_validate(tomllib.loads(text)).lbw_presets == {
        "FACE": [1.0] + [0.0] * 7 + [1.0] * 3 + [0.0] * 6  # config.toml's commented example
    }
    for presets, message in [
        ({"ALL": OUTD}, "lbw preset 'ALL' is a default preset's name"),
        ({"X": "1,0,1"}, "lbw preset 'X' needs 17 or 26 values (SD1/SD2) or 12 or 20 (SDXL)"),
    ]:
        with pytest.raises(ValidationError, match=re.escape(message)):
            Config.model_validate({"lbw_presets": presets})
