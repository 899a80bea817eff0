"""Bit-exact restore after `apply_loras` (normal exit and exception, fp32/fp16/bf16), the same
`Parameter` objects, base detection whatever the key order, and the wrong-base error."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loraworks.lora import LoRABaseMismatch, LoRAError, apply_loras, load_lora
from tests.fixtures.models import BASES
from tests.lora_parity import producers as P
from tests.lora_parity.catalogue import FACTORIES, cases

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# kinds that between them touch every patch path: low-rank (linear, conv, Tucker), Hadamard,
# Kronecker, DoRA (reads W), IA3 (scales W), full diff with bias, norm weights and biases,
# GLoRA (turns W)
RESTORE_KINDS = ("locon_tucker", "loha", "lokr", "dora", "ia3", "full", "norm", "glora")


@pytest.fixture(scope="module", params=BASES)
def restore_loras(request, lora_folder):
    base = request.param
    return base, [load_lora(P.lycoris_file(base, k, lora_folder).source) for k in RESTORE_KINDS]


def snapshot(components: dict[str, torch.nn.Module]):
    return {
        (c, name): (p, p.detach().clone())
        for c, m in components.items()
        for name, p in m.named_parameters()
    }


def assert_restored(components, before) -> None:
    after = {(c, n): p for c, m in components.items() for n, p in m.named_parameters()}
    assert after.keys() == before.keys()
    for key, (param, value) in before.items():
        assert after[key] is param, f"{key} is a new Parameter object"
        assert param.dtype == value.dtype and torch.equal(param.detach(), value), f"{key} differs"


def changed(components, before) -> int:
    return sum(
        not torch.equal(m.get_parameter(n).detach(), before[c, n][1])
        for c, m in components.items()
        for n, _ in m.named_parameters()
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("raises", [False, True], ids=["exit", "exception"])
def test_restore_is_bit_exact(restore_loras, dtype, raises):
    base, loras = restore_loras
    components = {c: m.to(dtype) for c, m in P.fresh(base).as_mapping().items()}
    before = snapshot(components)
    weights = [0.7, -0.4, {"unet": 1.0, "text_encoder": 0.5}, 0.9, 1.0, 0.3, 0.8, 0.6]

    class Boom(Exception):
        pass

    patched = 0
    try:
        with apply_loras(components, list(zip(loras, weights, strict=True))):
            patched = changed(components, before)
            if raises:
                raise Boom
    except Boom:
        pass
    assert patched > 100, "the LoRAs did not patch the model, so restoring proves nothing"
    assert_restored(components, before)


def read(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(source), "pt") as f:
        metadata = dict(f.metadata() or {})
        return {k: f.get_tensor(k) for k in f.keys()}, metadata  # noqa: SIM118 (not a dict)


# Files whose tensors fit more than one base (the engine then picks one, lists all it fits in
# `compatible_bases` and warns): IA3 vectors on a UNet slice carry no cross-attention width,
# and SD2 and SDXL both use linear projections.
AMBIGUOUS = {"peft_ia3"}


def detected(source) -> tuple[str, frozenset[str]]:
    lora = load_lora(source)
    return lora.base, frozenset(lora.compatible_bases)


@pytest.mark.parametrize("case", list(cases()))
def test_base_detection_ignores_key_order(case, lora_folder, produced_files):
    name, base = case
    source = produced_files.get((name, base)) or FACTORIES[name](base, lora_folder).source
    found, fits = detected(source)
    if name in AMBIGUOUS:
        assert base in fits, (found, fits)
    else:
        assert found == base, (found, fits)
    if source.is_dir():  # a PEFT folder: its config belongs to it, the order is the file's
        return
    state_dict, metadata = read(source)
    keys = list(state_dict)
    for seed in range(3):
        random.Random(seed).shuffle(keys)
        shuffled = {k: state_dict[k] for k in keys}
        assert detected((shuffled, metadata)) == (found, fits), f"key order {seed}"


@pytest.mark.parametrize(
    "lora_base, model_base", [("sdxl", "sd1"), ("sd1", "sdxl"), ("sd2", "sd1"), ("sd1", "sd2")]
)
def test_wrong_base_raises_and_names_both(lora_base, model_base, lora_folder):
    lora = load_lora(P.kohya_hand_path(lora_base, "kohya_lora", lora_folder)[0])
    components = P.fresh(model_base).as_mapping()
    before = snapshot(components)
    with pytest.raises(LoRABaseMismatch) as error, apply_loras(components, [(lora, 1.0)]):
        pass
    message = str(error.value)
    assert lora_base in message and model_base in message, message
    assert_restored(components, before)


def test_unmatched_keys_are_reported_or_raise(lora_folder):
    """A layer that names no module of the model: listed in the report, an error with strict."""
    state_dict, metadata = read(P.kohya_hand_path("sd1", "kohya_lora", lora_folder)[0])
    ghost = "lora_unet_down_blocks_7_attentions_0_proj_in"
    state_dict.update(
        {
            f"{ghost}.lora_down.weight": torch.zeros(4, 32, 1, 1),
            f"{ghost}.lora_up.weight": torch.zeros(32, 4, 1, 1),
            f"{ghost}.alpha": torch.tensor(2.0),
        }
    )
    lora = load_lora((state_dict, metadata))
    components = P.fresh("sd1").as_mapping()
    before = snapshot(components)
    with apply_loras(components, [(lora, 1.0)]) as report:
        assert changed(components, before) > 0
    assert any("down_blocks.7" in u or "down_blocks_7" in u for u in report.unmatched), report
    with (
        pytest.raises(LoRAError, match=r"down_blocks[._]7"),
        apply_loras(components, [(lora, 1.0)], strict=True),
    ):
        pass
    assert_restored(components, before)
