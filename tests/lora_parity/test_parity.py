"""Parity of the engine with the producers of the files, on tiny SD1/SD2/SDXL models.

Error = max|ours − reference| / max|reference − unpatched| per component output (UNet noise
prediction, text-encoder hidden states), ≤ 1e-3 in fp32; doing nothing scores 1.0. Every
reference must move every component it targets, so that the test can fail.

How the weight m reaches each producer is documented in `producers.py`. PEFT IA3 has no
notion of a weight, so only m = 1 is tested for it. Each kind runs on one base by default
(the bases rotate over the kinds); the other two bases are marked `slow`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from loraworks.lora import apply_loras, load_lora
from tests.fixtures.models import BASES
from tests.lora_parity import producers as P
from tests.lora_parity.catalogue import FACTORIES, cases
from tests.lora_parity.inputs import Outputs, effects, forward_all, relative_errors

TOLERANCE = 1e-3
MIN_EFFECT = 1e-3  # the reference must move each targeted output by this much (relative)


@cache
def unpatched(base: str) -> Outputs:
    return forward_all(P.fresh(base).as_mapping())


def ours(base: str, stack: list) -> Outputs:
    """Our engine on a fresh model: `stack` is [(source, weight), ...]."""
    comps = P.fresh(base)
    with apply_loras(comps.as_mapping(), [(load_lora(s), w) for s, w in stack]):
        return forward_all(comps.as_mapping())


@pytest.fixture(scope="module", params=list(cases()))
def produced(request, lora_folder, produced_files) -> P.Produced:
    name, base = request.param
    result = FACTORIES[name](base, lora_folder)
    produced_files[name, base] = result.source
    return result


def check(ours_out: Outputs, ref: Outputs, base: str, targets) -> dict[str, float]:
    un = unpatched(base)
    moved = effects(ref, un)
    for component in targets:
        assert moved[component] > MIN_EFFECT, f"the reference does not move {component}: {moved}"
    errors = {c: e for c, e in relative_errors(ours_out, ref, un).items() if c in targets}
    assert max(errors.values()) <= TOLERANCE, errors
    return errors


COMPONENT_WEIGHT_KINDS = {
    "locon",
    "dora",
    "ia3",
    "lokr_tucker",
    "diffusers_lora_diffusers",
    "diffusers_dora_peft_keys",
    "kohya_lora",
    "kohya_locon",
}


@pytest.mark.parametrize("weight", P.WEIGHTS)
def test_parity(produced: P.Produced, weight: float, record_property):
    if weight not in produced.weights:
        pytest.skip(f"{produced.kind} has no notion of weight {weight}")
    ref = produced.reference(weight)
    out = ours(produced.base, [(produced.source, weight)])
    record_property("relative_error", check(out, ref, produced.base, produced.targets))


def test_component_weights(produced: P.Produced):
    """A dict weight patches only the components it names, each at its own weight (on the
    multi-component files of each family: the rest add run time, not coverage)."""
    if produced.kind not in COMPONENT_WEIGHT_KINDS:
        pytest.skip("covered by the other families' files")
    weight = {"unet": 0.5, "text_encoder": -1.0}
    ref = produced.reference(weight)
    out = ours(produced.base, [(produced.source, weight)])
    named = tuple(c for c in produced.targets if c in weight)
    check(out, ref, produced.base, named)
    un = unpatched(produced.base)
    for component in set(out) - set(weight):
        assert (out[component] == un[component]).all(), f"{component} was patched"


STACKS = {
    "additive": {"locon": 0.8, "loha": -0.5, "lokr": {"unet": 1.0, "text_encoder": 0.7}},
    # kinds that read W: LyCORIS computes each wrapper's residual from the original W, which
    # is also the engine's documented order rule, so the stack order must not matter
    "reads_w": {"dora": 0.8, "ia3": -0.5, "lora": {"unet": 1.0, "text_encoder": 0.7}},
}


@pytest.mark.parametrize(
    "stack, base",
    [
        pytest.param(s, b, marks=() if s == "additive" or b == "sd2" else pytest.mark.slow)
        for s in STACKS
        for b in BASES
    ],
)
def test_stack_of_three_kinds(stack: str, base: str, lora_folder: Path):
    """Three LyCORIS files of different kinds at once (one with a per-component weight), in
    the given order and reversed."""
    files, reference = P.lycoris_stack(base, STACKS[stack], lora_folder / stack)
    ref = reference()
    for order in (files, files[::-1]):
        check(ours(base, order), ref, base, ("unet", "text_encoder"))
