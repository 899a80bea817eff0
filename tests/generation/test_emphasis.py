"""A1111 emphasis: the parser against A1111's own documented examples, and the encoding
against the plain encoder output scaled by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from loraworks.generation.conditioning import encode_prompt
from loraworks.generation.emphasis import parse_emphasis


@pytest.mark.parametrize(
    ("text", "runs"),
    [  # the examples in the docstring of A1111's `prompt_parser.parse_prompt_attention`
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.1 * 1.1 * 1.3),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.1**4),
                (".", 1.1),
            ],
        ),
    ],
)
def test_parser_matches_a1111(text, runs):
    got = parse_emphasis(text)
    assert [f for f, _ in got] == [f for f, _ in runs]
    assert [w for _, w in got] == pytest.approx([w for _, w in runs])


def test_odd_input_is_text_never_an_error():
    assert parse_emphasis("(word:1.2.3)") == [("word:1.2.3)", 1.1)]  # not a number: text
    assert parse_emphasis("(((") == [("", 1.0)]
    assert parse_emphasis("a \\ b:c") == [("a \\ b:c", 1.0)]


def _embeds(pipe, prompt: str) -> torch.Tensor:
    return encode_prompt(pipe, prompt, None, False, 64, 64).embeds


@pytest.mark.parametrize("base", ["sd1", "sd2", "sdxl"])
def test_weight_one_is_the_plain_prompt_and_a_weight_scales_its_tokens(pipes, base):
    pipe = pipes[base]
    plain = _embeds(pipe, "a cat and a dog")
    # weight 1 everywhere: the hand-built token row must be the tokenizer's own, exactly
    assert torch.equal(_embeds(pipe, "a (cat:1.0) and a dog"), plain)
    # "cat" follows the start token and "a": its tokens ×1.5, then the mean restored, per
    # encoder (SDXL: each half on its own, with its own tokenizer)
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if base == "sdxl":
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    parts, start = [], 0
    for tokenizer, encoder in encoders:
        first = 1 + len(tokenizer("a", add_special_tokens=False).input_ids)
        cat = len(tokenizer("cat", add_special_tokens=False).input_ids)
        weights = torch.ones(plain.shape[1])
        weights[first : first + cat] = 1.5
        width = encoder.config.hidden_size
        half = plain[..., start : start + width]
        scaled = half * weights[None, :, None]
        parts.append(scaled * half.mean() / scaled.mean())
        start += width
    torch.testing.assert_close(_embeds(pipe, "a (cat:1.5) and a dog"), torch.cat(parts, -1))


def _row(tokenizer, ids: list[int]) -> torch.Tensor:
    """One CLIP row of 77 built by hand: start, up to 75 tokens, end, the tokenizer's padding."""
    pad = tokenizer.model_max_length - 2 - len(ids)
    return torch.tensor(
        [[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad]
    )


@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_a_long_prompt_is_encoded_in_rows_and_the_negative_padded_with_empty_rows(pipes, base):
    """Past 75 text tokens the prompt continues in a second row of 77 (A1111, ComfyUI)
    instead of being cut; with guidance the one-row negative gets an empty row."""
    pipe = pipes[base]
    prompt = "a red circle"  # no commas: the rows split at 75 tokens exactly
    while len(pipe.tokenizer(prompt, add_special_tokens=False).input_ids) <= 90:
        prompt += " and a red circle"
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if base == "sdxl":
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    ids = pipe.tokenizer(prompt, add_special_tokens=False).input_ids
    assert 75 < len(ids) <= 150  # two rows
    cond = encode_prompt(pipe, prompt, "blurry", True, 64, 64)
    assert cond.embeds.shape[1] == 154

    def encode(tokenizer, encoder, rows):
        out = [encoder(r, output_hidden_states=True) for r in rows]
        return torch.cat([o.hidden_states[-2] if base == "sdxl" else o[0] for o in out], dim=1)

    want_cond, want_uncond = [], []
    with torch.no_grad():
        for tokenizer, encoder in encoders:
            t = tokenizer(prompt, add_special_tokens=False).input_ids
            want_cond.append(
                encode(tokenizer, encoder, [_row(tokenizer, t[:75]), _row(tokenizer, t[75:])])
            )
            neg = tokenizer("blurry", add_special_tokens=False).input_ids
            want_uncond.append(
                encode(tokenizer, encoder, [_row(tokenizer, neg), _row(tokenizer, [])])
            )
    want = torch.cat([torch.cat(want_uncond, -1), torch.cat(want_cond, -1)])
    torch.testing.assert_close(cond.embeds, want)
    if base == "sdxl":  # pooled: the first row of the second encoder
        with torch.no_grad():
            t = pipe.tokenizer_2(prompt, add_special_tokens=False).input_ids
            first = pipe.text_encoder_2(_row(pipe.tokenizer_2, t[:75]))[0]
        torch.testing.assert_close(cond.added["text_embeds"][1:], first)


def test_break_starts_a_new_row(pipes):
    pipe = pipes["sd1"]
    tok = pipe.tokenizer
    got = encode_prompt(pipe, "a red circle BREAK a blue square", None, False, 64, 64).embeds
    with torch.no_grad():
        rows = [
            _row(tok, tok(t, add_special_tokens=False).input_ids)
            for t in ("a red circle", "a blue square")
        ]
        want = torch.cat([pipe.text_encoder(r)[0] for r in rows], dim=1)
    torch.testing.assert_close(got, want)


def test_a_full_row_ends_after_a_late_comma(pipes):
    """A1111's comma backtrack: a full row followed by more text ends after its last comma
    when that comma is within its last 20 tokens; no token is lost or repeated."""
    from loraworks.generation.conditioning import _rows

    tok = pipes["sd1"].tokenizer
    comma = tok(",", add_special_tokens=False).input_ids
    assert len(comma) == 1
    prompt = "a red circle"
    while len(tok(prompt, add_special_tokens=False).input_ids) <= 90:
        prompt += ", a red circle"
    ids = tok(prompt, add_special_tokens=False).input_ids
    rows = _rows(tok, prompt)
    texts = []
    for row, *_ in rows:
        body = row[0, 1:].tolist()
        texts.append(body[: body.index(tok.eos_token_id)])
    assert [t for text in texts for t in text] == ids and len(texts) == 2
    assert texts[0][-1] == comma[0] and 75 - 20 <= len(texts[0]) < 75


@given(st.text(alphabet="ab ,:.()[]\\0123456789-+", max_size=40))
def test_any_text_parses_to_finite_weights(text):
    runs = parse_emphasis(text)
    assert runs and all(math.isfinite(w) for _, w in runs)
