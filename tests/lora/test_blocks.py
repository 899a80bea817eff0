"""Block weights (`lbw=`, A1111's LoRA Block Weight extension) in the engine.

Truths: the slots come from the original (LDM) UNet layout as diffusers' conversion script
writes it (`tests/models/ldm_layout.py`: `input_blocks.N` is INnn); the default presets on
the 17 slots are the extension's own strings, copied here; the acceptance cases compare with
weights whose answer is known without block weights (no LoRA, the plain weight,
``te=1:unet=0``) and with the untouched model.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from loraworks.lora import LoRAError, apply_loras, load_lora, with_user_presets
from loraworks.lora.blocks import FORMS, PRESETS, SLOTS, slot_of
from tests.fixtures.models import build_components
from tests.lora.util import TE_ATTN, kohya_lora, kohya_name, snapshot, targets
from tests.models.ldm_layout import unet_to_ldm

# the extension's DEF_WEIGHT_PRESET (scripts/lora_block_weight.py), verbatim
EXTENSION_PRESETS = """\
NONE:0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
ALL:1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1
INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0
IND:1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0
INALL:1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0
MIDD:1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0
OUTD:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0
OUTS:1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1
OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1
ALL0.5:0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5"""


def test_default_presets_are_the_extensions_on_its_17_slots():
    assert set(PRESETS) == {line.split(":")[0] for line in EXTENSION_PRESETS.splitlines()}
    for line in EXTENSION_PRESETS.splitlines():
        name, values = line.split(":")
        mine = dict(zip(SLOTS, PRESETS[name], strict=True))
        assert [mine[slot] for slot in FORMS[17]] == [float(v) for v in values.split(",")], name


@pytest.mark.parametrize("base", ["sd1", "sd2", "sdxl"])
def test_every_unet_module_lies_in_the_slot_of_its_original_block(base):
    unet = build_components(base).unet
    ldm = dict(zip(unet.state_dict(), unet_to_ldm(unet), strict=True))  # same order
    last = "OUT08" if base == "sdxl" else "OUT11"
    seen = set()
    for key, ldm_key in ldm.items():
        path = key.rsplit(".", 1)[0]
        name = ldm_key.removeprefix("model.diffusion_model.")
        if m := re.match(r"input_blocks\.(\d+)\.", name):
            want = f"IN{int(m.group(1)):02d}"
        elif m := re.match(r"output_blocks\.(\d+)\.", name):
            want = f"OUT{int(m.group(1)):02d}"
        elif name.startswith("middle_block."):
            want = "MID"
        elif name.startswith(("time_embed.", "label_emb.")):
            want = "IN00"  # our choice: the extension leaves them at the plain weight
        else:
            assert name.startswith("out."), name
            want = last
        assert slot_of("unet", path, base) == want, (key, ldm_key)
        seen.add(want)
    assert seen == set(FORMS[20 if base == "sdxl" else 26]) - {"BASE"}
    assert slot_of("text_encoder", "text_model.encoder.layers.0.mlp.fc1", base) == "BASE"
    assert slot_of("text_encoder_2", "text_model.encoder.layers.0.mlp.fc1", base) == "BASE"


def lycoris_file(comps, seed: int = 1, rank: int = 2) -> dict[str, torch.Tensor]:
    """A LyCORIS file on every UNet linear and convolution (LoHa on linears, LoCon on
    convolutions: all 26 / 20 slots, time embedding and out conv included) and the text
    encoders' attention."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    unet = targets(comps, kinds=(nn.Linear, nn.Conv2d), suffixes=())
    te = targets(comps, suffixes=TE_ATTN)
    for comp, name, _, mod in [t for t in unet if t[0] == "unet"] + [
        t for t in te if t[0] != "unet"
    ]:
        key = kohya_name(comps.base, comp, name)
        w = mod.weight
        if w.dim() == 4:
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, *w.shape[1:], generator=g) * 0.1
            sd[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.1
        else:
            for part, shape in (("w1_a", (w.shape[0], rank)), ("w1_b", (rank, w.shape[1]))):
                sd[f"{key}.hada_{part}"] = torch.randn(*shape, generator=g) * 0.3
            for part, shape in (("w2_a", (w.shape[0], rank)), ("w2_b", (rank, w.shape[1]))):
                sd[f"{key}.hada_{part}"] = torch.randn(*shape, generator=g) * 0.3
        sd[f"{key}.alpha"] = torch.tensor(float(rank))
    return sd


FILES = {
    "kohya": lambda comps: kohya_lora(comps, rank=2, alpha=2.0, seed=3, scale=0.2),
    "lycoris": lycoris_file,
}


@pytest.fixture(scope="module", params=[(b, f) for b in ("sd1", "sdxl") for f in FILES])
def case(request):
    base, kind = request.param
    comps = build_components(base)
    lora = load_lora((FILES[kind](comps), {}))
    assert lora.base == base and not lora.warnings
    if kind == "lycoris":
        assert {"loha", "lora"} <= set(lora.kinds), lora.kinds
        slots = {slot_of(t.split(".")[0], t.split(".", 1)[1], base) for t in lora.layers}
        assert slots == set(FORMS[20 if base == "sdxl" else 26])  # the file fills every slot
    return base, kind, comps, lora


def patched(comps, lora, weight) -> dict[str, torch.Tensor]:
    with apply_loras(comps.as_mapping(), [(lora, weight)], strict=True):
        return snapshot(comps)


def vector(base: str, kind: str, **ones: float) -> list[float]:
    """The file kind's own vector length (plain LoRA 17/12, LyCORIS 26/20), given slots set."""
    n = {"sd1": (17, 26), "sdxl": (12, 20)}[base][kind == "lycoris"]
    return [ones.get(slot, 0.0) for slot in FORMS[n]]


def assert_same(a: dict, b: dict) -> None:
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def test_none_patches_nothing(case):
    _, _, comps, lora = case
    assert_same(patched(comps, lora, {"block_weights": "NONE"}), snapshot(comps))


def test_all_is_the_plain_weight(case):
    base, kind, comps, lora = case
    plain = patched(comps, lora, 0.8)
    every = dict.fromkeys(("unet", "text_encoder", "text_encoder_2"), 0.8)
    assert_same(patched(comps, lora, {**every, "block_weights": "ALL"}), plain)
    ones = [1.0] * len(vector(base, kind))
    assert_same(patched(comps, lora, {**every, "block_weights": ones}), plain)
    assert any(not torch.equal(v, snapshot(comps)[k]) for k, v in plain.items())


def test_base_only_is_text_encoders_only(case):
    base, kind, comps, lora = case
    te_only = patched(comps, lora, {"unet": 0.0, "text_encoder": 1.0, "text_encoder_2": 1.0})
    assert_same(patched(comps, lora, {"block_weights": vector(base, kind, BASE=1.0)}), te_only)


def test_mid_only_changes_the_mid_block_alone_at_the_full_weight(case):
    base, kind, comps, lora = case
    before = snapshot(comps)
    mid = patched(comps, lora, {"block_weights": vector(base, kind, MID=1.0)})
    plain = patched(comps, lora, 1.0)
    changed = {k for k in mid if not torch.equal(mid[k], before[k])}
    assert changed and all(k.startswith("unet.mid_block.") for k in changed)
    assert all(torch.equal(mid[k], plain[k]) for k in changed)
    assert {k for k in plain if k.startswith("unet.mid_block.")} & set(changed)


def test_a_block_number_scales_that_blocks_delta(case):
    """OUT03 at 0.5: the delta of each module there is half the plain weight's (linear kinds:
    LoRA, and LoHa whose ΔW scales with the weight too)."""
    base, kind, comps, lora = case
    before = snapshot(comps)
    slot = "OUT03"
    half = patched(comps, lora, {"block_weights": vector(base, kind, **{slot: 0.5})})
    plain = patched(comps, lora, 0.5)
    changed = {k for k in half if not torch.equal(half[k], before[k])}
    assert changed
    for k in changed:
        path = k.split(".", 1)[1].rsplit(".", 1)[0]
        assert slot_of("unet", path, base) == slot, k
        torch.testing.assert_close(half[k], plain[k], rtol=0, atol=0)


def test_a_short_vector_leaves_unnamed_blocks_at_zero_and_says_so(case):
    base, kind, comps, lora = case
    if kind != "lycoris":
        pytest.skip("a plain LoRA has layers in the named blocks only")
    short = [1.0] * (12 if base == "sdxl" else 17)
    with apply_loras(comps.as_mapping(), [(lora, {"block_weights": short})]) as report:
        pass
    assert any("IN00" in w and "get weight 0" in w for w in report.warnings), report.warnings


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        ({"block_weights": [1.0] * 12}, "lbw has 12 values, which fits neither a sd1 LoRA (17)"),
        ({"block_weights": [1.0] * 13}, "lbw has 13 values; SD1/SD2 take 17 (LoRA) or 26"),
        ({"block_weights": "OUTX"}, "unknown lbw preset 'OUTX' (known: NONE, ALL"),
        ({"block_weights": [1.0] * 16 + [float("nan")]}, "lbw value nan is not a finite"),
        ({"start": 0.6, "stop": 0.4}, "start=0.6 must come before stop=0.4"),
        ({"start": 5, "stop": 5}, "start=5 must come before stop=5"),
        ({"stop": 1.5}, "stop= must be a step number"),
        ({"start": -1}, "start= must be a step number"),
    ],
)
def test_bad_options_are_refused_before_any_weight_changes(weight, message):
    comps = build_components("sd1")
    lora = load_lora((kohya_lora(comps), {}))
    before = snapshot(comps)
    with (
        pytest.raises(LoRAError, match=re.escape(message)),
        apply_loras(comps.as_mapping(), [(lora, weight)]),
    ):
        pass
    assert_same(snapshot(comps), before)


def test_a_user_preset_becomes_its_vector_and_is_checked_like_one():
    face = [1.0] + [0.0] * 7 + [1.0] * 3 + [0.0] * 6
    user = {"FACE": face, "BAD": [float("nan")] * 17, "XL": [1.0] * 12}
    assert with_user_presets({"block_weights": "FACE"}, "sd1", user, "ink") == {
        "block_weights": face
    }
    assert with_user_presets({"block_weights": "OUTD"}, "sd1", user, "ink") == {
        "block_weights": "OUTD"  # a default keeps its name: it means the same everywhere
    }
    assert with_user_presets(0.8, "sd1", user, "ink") == 0.8
    for name, message in [
        ("BAD", "ink: lbw value nan is not a finite number"),
        ("XL", "ink: lbw has 12 values, which fits neither a sd1 LoRA (17)"),
        ("FAC", "ink: unknown lbw preset 'FAC' (known: NONE, ALL"),
    ]:
        with pytest.raises(LoRAError, match=re.escape(message)):
            with_user_presets({"block_weights": name}, "sd1", user, "ink")
