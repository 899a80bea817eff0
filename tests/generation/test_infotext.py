"""Every PNG carries A1111's infotext (#19). The truth is a parser written here from A1111's
documented format (the wiki's "PNG info" layout: prompt lines, an optional `Negative prompt:`
section, then one line of `Key: value` pairs joined by ", " whose values are JSON strings when
they hold ',', ':' or a line break), not from our writer or our reader; hashes are computed
here with hashlib."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from PIL import Image

import loraworks
from loraworks.generation import LoRASpec, generate
from loraworks.generation.cache import cache_for
from loraworks.generation.infotext import (
    A1111_SAMPLERS,
    InfotextError,
    format_infotext,
    parse_infotext,
    scheduler_from_a1111,
)
from loraworks.generation.recalled import settings_from_chunks
from loraworks.generation.recipe import Recipe
from loraworks.generation.schedulers import SCHEDULERS
from tests.embeddings.producers import write_kohya
from tests.fixtures.a1111_hashes import after_header as _after_header
from tests.generation.conftest import tiny_request

# one pair: a key, then a JSON string or text up to the next comma
_PAIR = re.compile(r'\s*([A-Za-z][A-Za-z0-9 _/\-]*): ("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)')


def a1111_read(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, parameters) of an infotext, as A1111's PNG-info reader does."""
    lines = text.split("\n")
    params: dict[str, str] = {}
    found = _PAIR.findall(lines[-1])
    if len(found) >= 3:
        lines.pop()
        for key, value in found:
            params[key] = json.loads(value) if value.startswith('"') else value.strip()
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :]
        (negative if in_negative else prompt).append(line.strip())
    return "\n".join(prompt), "\n".join(negative), params


def _hashes(text: str) -> dict[str, str]:
    """`Lora hashes`/`TI hashes`: "name: hash, …"."""
    return dict(item.strip().rsplit(": ", 1) for item in text.split(","))


def test_every_png_reads_back_to_every_field(mm, tmp_path):
    pipe = cache_for(mm).model(mm.get("tiny-sd1", type="main")).pipe
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    embedding = mm.install(write_kohya(tmp_path / "zqinfo.safetensors", torch.randn(2, width)))
    request = tiny_request(
        "sd1",
        prompt="a red circle, zqinfo",
        negative_prompt="blurry, dark",
        cfg=7.5,
        scheduler="dpmpp_2m_karras",
        loras=[
            {"name": "sd1-a", "weight": 0.8},
            {"name": "sd1-b", "weight": {"unet": 0.5, "text_encoder": 1.0, "text_encoder_2": 1.0}},
        ],
    )
    result = generate(request, manager=mm)
    with Image.open(result.images[0]) as image:
        text = image.text["parameters"]
    prompt, negative, params = a1111_read(text)

    assert prompt == "a red circle, zqinfo, <lora:sd1-a:0.8>, <lora:sd1-b:te=1:unet=0.5>"
    assert negative == "blurry, dark"
    lora_files = {name: mm.get(name, type="lora").path.read_bytes() for name in ("sd1-a", "sd1-b")}
    assert params == {
        "Steps": "2",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7.5",
        "Seed": "3",
        "Size": "64x64",
        # a diffusers folder has no AutoV2: no "Model hash"
        "Model": "tiny-sd1",
        "Lora hashes": params["Lora hashes"],
        "TI hashes": params["TI hashes"],
        "Version": f"loraworks-{loraworks.__version__}",
    }
    assert _hashes(params["Lora hashes"]) == {
        name: hashlib.sha256(_after_header(data)).hexdigest()[:12]
        for name, data in lora_files.items()
    }
    ti = hashlib.sha256(embedding.path.read_bytes()).hexdigest()[:12]
    assert _hashes(params["TI hashes"]) == {embedding.name: ti}
    # our own reader agrees with the independent one
    ours = parse_infotext(text)
    assert (ours.prompt, ours.negative_prompt, ours.params) == (prompt, negative, params)
    # and recall, reading only the infotext (as another tool's PNG), asks for the same image
    recalled = settings_from_chunks({"parameters": text}, "infotext only", mm)
    assert recalled.unmapped == []
    keys = {name: mm.get(name, type="lora").key for name in ("sd1-a", "sd1-b")}
    assert recalled.request() == request.model_copy(
        update={
            "model": mm.get("tiny-sd1", type="main").key,
            "loras": [
                LoRASpec(name=keys["sd1-a"], weight=0.8),
                LoRASpec(name=keys["sd1-b"], weight=request.loras[1].weight),
            ],
        }
    )


def _recipe(**changes) -> Recipe:
    model = {"key": "k", "name": "m", "hash": None, "base": "sd1"}
    fields = dict(prompt="a", negative_prompt=None, steps=20, cfg=7.0, scheduler="euler")
    data = {"loraworks_version": "0", "model": model, "loras": [], "seed": 1, **fields}
    return Recipe.model_validate(data | {"width": 512, "height": 768} | changes)


def test_model_hash_quoting_and_multiline_prompts_read_back():
    model = {"key": "k", "name": "my: model, v2", "hash": None, "base": "sd1"}
    model["hashes"] = {"AutoV2": "0123456789", "SHA256": "0123456789" + "a" * 54}
    lora = {"key": "l", "name": "odd:name, x", "hash": None, "base": "sd1", "weight": 1.0}
    lora["hashes"] = {"AutoV3": "abcdef012345"}
    recipe = _recipe(
        model=model,
        loras=[lora],
        prompt="line one\nline two: with colon",
        negative_prompt="neg one\nneg two",
        strength=0.5,
    )
    prompt, negative, params = a1111_read(format_infotext(recipe))
    assert prompt == "line one\nline two: with colon, <lora:odd:name, x:1>"
    assert negative == "neg one\nneg two"
    assert params["Model hash"] == "0123456789"
    assert params["Model"] == "my: model, v2"
    assert params["Denoising strength"] == "0.5"
    assert _hashes(params["Lora hashes"]) == {"oddname x": "abcdef012345"}
    assert "TI hashes" not in params and params["Sampler"] == "Euler"


def test_every_scheduler_has_an_a1111_sampler_that_maps_back():
    assert set(SCHEDULERS) <= set(A1111_SAMPLERS)
    for ours, (sampler, schedule) in A1111_SAMPLERS.items():
        assert scheduler_from_a1111(sampler, schedule) == ours
    assert scheduler_from_a1111("DPM++ 2M Karras", None) == "dpmpp_2m_karras"  # before 1.9
    assert scheduler_from_a1111("DPM++ 2M", None) == "dpmpp_2m"
    assert scheduler_from_a1111("DPM++ SDE", "Karras") is None
    assert scheduler_from_a1111("Euler", "Exponential") is None


@pytest.mark.parametrize(
    "text",
    [
        "x" * 70000,
        "a\0b\nSteps: 1, Sampler: Euler, Seed: 1",
    ],
)
def test_malformed_infotext_is_a_clear_error(text):
    with pytest.raises(InfotextError):
        parse_infotext(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "just a prompt",
        'a cat\nSteps: "unterminated, Sampler: Euler, Seed: 1',
        "a cat\nSteps: 20, Sampler: Euler",  # two pairs: A1111 reads it as prompt
    ],
)
def test_text_without_a_parameters_line_is_all_prompt(text):
    parsed = parse_infotext(text)
    assert parsed.params == {} and parsed.prompt == text.strip()
