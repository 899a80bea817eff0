"""Block weights and step windows end to end (`generate`, recipes, recall): the pixels equal
those of requests whose answer is known without the options (no LoRA, the plain weight,
``te=1:unet=0``, no window), and bad options are refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from loraworks.generation import PromptSyntaxError, generate, recall
from loraworks.generation.api import check_request
from loraworks.lora import LoRAError
from tests.fixtures.models import build_components
from tests.generation.conftest import pipeline_weights, tiny_request
from tests.generation.test_generate import _loaded
from tests.lora.test_blocks import lycoris_file

EVERY = ("unet", "text_encoder", "text_encoder_2")
KINDS = {"kohya": "a", "lycoris": "lyco"}
SHORT = {"sd1": (17, 26), "sdxl": (12, 20)}


@pytest.fixture(scope="module")
def loras(mm, tmp_path_factory):
    """`<base>-lyco`: a LyCORIS file (LoHa + LoCon on every block) beside the kohya ones."""
    for base in SHORT:
        path = tmp_path_factory.mktemp("lyco") / f"{base}-lyco.safetensors"
        save_file(lycoris_file(build_components(base), seed=7), str(path))
        mm.install(path, name=f"{base}-lyco", type="lora")
    return mm


_SEEN: dict[tuple, np.ndarray] = {}


def _pixels(mm, base: str, prompt: str, **kw) -> np.ndarray:
    """The image of a 2-step request (the same request's pixels are kept: they are fixed)."""
    key = (base, prompt, repr(kw))
    if key not in _SEEN:
        result = generate(tiny_request(base, prompt=prompt, **kw), manager=mm)
        _SEEN[key] = np.asarray(Image.open(result.images[0]))
    return _SEEN[key]


def _vector(base: str, kind: str, **ones: float) -> str:
    from loraworks.lora.blocks import FORMS

    n = SHORT[base][kind == "lycoris"]
    return ",".join(str(ones.get(slot, 0)) for slot in FORMS[n])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("base", SHORT)
def test_block_weight_pixels(loras, base, kind):
    mm, name = loras, f"{base}-{KINDS[kind]}"
    none = _pixels(mm, base, "a red circle")
    plain = _pixels(mm, base, f"a red circle <lora:{name}:0.8>")
    assert not np.array_equal(none, plain)
    assert np.array_equal(_pixels(mm, base, f"a red circle <lora:{name}:0.8:lbw=NONE>"), none)
    assert np.array_equal(_pixels(mm, base, f"a red circle <lora:{name}:0.8:lbw=ALL>"), plain)
    te_only = _pixels(mm, base, f"a red circle <lora:{name}:te=1:unet=0>")
    base_only = _vector(base, kind, BASE=1)
    assert np.array_equal(
        _pixels(mm, base, f"a red circle <lora:{name}:1:lbw={base_only}>"), te_only
    )


def test_windows_pixels_and_weights_after(loras, pristine):
    mm = loras
    none = _pixels(mm, "sd1", "a red circle")
    plain = _pixels(mm, "sd1", "a red circle <lora:sd1-a:0.8>")
    whole = _pixels(mm, "sd1", "a red circle <lora:sd1-a:0.8:start=0.0:stop=1.0>")
    assert np.array_equal(whole, plain)
    never = generate(
        tiny_request("sd1", prompt="a red circle <lora:sd1-a:0.8:start=50>"), manager=mm
    )
    assert np.array_equal(np.asarray(Image.open(never.images[0])), none)
    assert "LoRA 'sd1-a' is active in none of the 2 steps" in never.warnings[0]
    part = _pixels(mm, "sd1", "a red circle <lora:sd1-a:0.8:stop=2>")
    assert not np.array_equal(part, plain) and not np.array_equal(part, none)
    loaded = _loaded(mm, "sd1")
    loaded.patcher.restore()
    after = pipeline_weights(loaded.pipe)
    assert all(torch.equal(after[k], pristine["sd1"][k]) for k in after)


def test_options_are_in_the_recipe_and_recall_reproduces_them(loras):
    mm = loras
    prompt = "a red circle <lora:sd1-lyco:0.8:lbw=OUTD:start=1:stop=0.5>"
    first = generate(tiny_request("sd1", prompt=prompt), manager=mm)
    [entry] = first.recipe["loras"]
    options = {"block_weights": "OUTD", "start": 1, "stop": 0.5}
    assert entry["weight"] == {**dict.fromkeys(EVERY, 0.8), **options}
    infotext = Image.open(first.images[0]).text["parameters"]  # A1111's, for other tools
    assert "<lora:sd1-lyco:te=0.8:unet=0.8:lbw=OUTD:start=1:stop=2>" in infotext  # steps: 2
    again = recall(first.images[0], manager=mm)
    assert np.array_equal(
        np.asarray(Image.open(first.images[0])), np.asarray(Image.open(again.images[0]))
    )


def test_api_weight_mapping_and_user_presets(loras, monkeypatch):
    mm = loras
    face = "1,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0"
    vector = [float(v) for v in face.split(",")]
    presets = mm.config.model_copy(update={"lbw_presets": {"FACE": vector}})
    monkeypatch.setattr(mm, "config", presets)
    weight = {**dict.fromkeys(EVERY, 0.8), "block_weights": "FACE"}
    by_name = _pixels(mm, "sd1", "a red circle", loras=[{"name": "sd1-a", "weight": weight}])
    by_vector = _pixels(mm, "sd1", f"a red circle <lora:sd1-a:0.8:lbw={face}>")
    assert np.array_equal(by_name, by_vector)
    checked = check_request(tiny_request("sd1", prompt="<lora:sd1-a:lbw=FACE>"), mm)
    assert checked.stack[0].weight == {"block_weights": vector}


ONES = {n: ",".join(["1"] * n) for n in (12, 17)}


@pytest.mark.parametrize(
    ("prompt", "error", "message"),
    [
        (f"<lora:sd1-a:1:lbw={ONES[12]}>", LoRAError, r"fits neither a sd1 LoRA \(17\) nor a sd1"),
        (f"<lora:sdxl-a:1:lbw={ONES[17]}>", LoRAError, r"fits neither a sdxl LoRA \(12\)"),
        ("<lora:sd1-a:1:lbw=OUTX>", LoRAError, "unknown lbw preset 'OUTX'"),
        ("<lora:sd1-a:1:start=0.5:stop=0.5>", PromptSyntaxError, "start=0.5 must come before"),
    ],
)
def test_bad_options_are_refused_before_any_work(loras, prompt, error, message):
    mm = loras
    before = mm.images.count()
    base = "sdxl" if "sdxl-a" in prompt else "sd1"
    with pytest.raises(error, match=message):
        check_request(tiny_request(base, prompt=prompt), mm)
    with pytest.raises(error, match=message):
        generate(tiny_request(base, prompt=prompt), manager=mm)
    assert mm.images.count() == before
