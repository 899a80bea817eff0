"""`<lora:...>` tags: A1111 weight order, tag removal, and clear errors for bad input."""

from __future__ import annotations

import re

import pytest

from loraworks.generation import LoRASpec, PromptSyntaxError
from loraworks.generation.prompt import parse_lora_option, parse_prompt


def test_tags_are_parsed_in_order_and_removed_from_the_text():
    parsed = parse_prompt("a cat, <lora:ink:0.8>, sunset <lora:lcm> <lora:pop:0.5:1.25>")
    assert parsed.text == "a cat, sunset"
    assert parsed.loras == [
        LoRASpec(name="ink", weight=0.8),
        LoRASpec(name="lcm", weight=None),
        LoRASpec(name="pop", weight={"unet": 1.25, "text_encoder": 0.5, "text_encoder_2": 0.5}),
    ]


def both(te: float, unet: float) -> dict[str, float]:
    return {"unet": unet, "text_encoder": te, "text_encoder_2": te}


@pytest.mark.parametrize(
    ("tag", "weight"),
    [  # A1111's extra_networks_lora.py: te = te= or 1st; unet = unet=, else 2nd, else te
        ("<lyco:ink:0.6>", 0.6),  # the LyCORIS extension's tag, in many shared prompts
        ("<lora:ink:unet=0.3:te=0.8>", both(0.8, 0.3)),
        ("<lora:ink:0.5:unet=0.2>", both(0.5, 0.2)),
        ("<lora:ink:te=0.5>", 0.5),
        ("<lora:ink:unet=0.4>", both(1.0, 0.4)),  # te is 1 when only unet= is given
        ("<lyco:ink:0.7:0.7>", 0.7),
    ],
)
def test_a1111_named_weights_and_lyco_tags(tag, weight):
    parsed = parse_prompt(f"a cat {tag}, b")
    assert parsed.loras == [LoRASpec(name="ink", weight=weight)] and parsed.text == "a cat, b"


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("<lora:x:1> a dog", "a dog"),
        ("a dog <lora:x:-0.5>", "a dog"),
        ("a,<lora:x:1>,b", "a,b"),
        ("plain prompt,  with  spaces", "plain prompt, with spaces"),
        ("", ""),
    ],
)
def test_text_left_for_the_encoder(prompt, text):
    assert parse_prompt(prompt).text == text


def test_weights_may_be_negative_or_integers():
    assert parse_prompt("<lora:slider:-5>").loras[0].weight == -5.0


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a <lora:ink:strong>", "weight 'strong' is not a number"),
        ("a <lora:ink:nan>", "weight 'nan' is not a number"),
        ("a <lora:ink:0.5:x>", "weight 'x' is not a number"),
        ("a <lora:ink:0.8 cat", "unclosed tag '<lora:ink:0.8 cat'"),
        ("a <lora:ink <lora:pop:1>", "unclosed tag"),
        ("a <lora::0.8>", "missing LoRA name"),
        ("a <lora:ink:1:1:1>", "at most two weights"),
        ("a <lora:ink:dyn=16>", "dyn= (a dynamic-rank cut-off) is not supported"),
        (
            "a <lora:ink:clip=1>",
            "unknown or repeated clip= (use te=, unet=, lbw=, start=, stop= and step=)",
        ),
        ("a <lora:ink:te=1:te=2>", "unknown or repeated te="),
        ("a <lyco:ink:unet=soft>", "<lyco:ink:unet=soft>: weight 'soft' is not a number"),
        ("a <lyco:ink:0.5", "unclosed tag '<lyco:ink:0.5'"),
    ],
)
def test_bad_tags_raise_clear_errors(prompt, message):
    with pytest.raises(PromptSyntaxError, match=re.escape(message)):
        parse_prompt(prompt)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("sd1-a:x", "--lora sd1-a:x: weight 'x' is not a number"),
        ("sd1-a:inf", "--lora sd1-a:inf: weight 'inf' is not a number"),
        (":0.8", "--lora :0.8: missing LoRA name (write --lora name:0.8)"),
        ("ink:1:1:1", "--lora ink:1:1:1: at most two weights (--lora name:te_weight:unet_weight)"),
        (
            "ink:clip=1",
            "--lora ink:clip=1: unknown or repeated clip= (use te=, unet=, lbw=, start=, stop= "
            "and step=)",
        ),
    ],
)
def test_a_bad_lora_option_is_quoted_as_typed(option, message):
    """The user typed `--lora …`, not a `<lora:…>` tag: the error shows what they typed."""
    with pytest.raises(PromptSyntaxError, match=f"^{re.escape(message)}$"):
        parse_lora_option(option)


def test_a_lora_option_reads_as_a_tag():
    assert parse_lora_option(" ink:0.5:1 ") == parse_prompt("<lora:ink:0.5:1>").loras[0]
