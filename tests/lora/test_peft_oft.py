"""PEFT OFT (``oft_R``) against PEFT 0.21's own merge on a linear, a 1x1 and a 3x3 conv, for
each of its rotation settings; the user weight against the interpolation formula; bad files.
(Whole-model parity through PEFT's forward: `tests/lora_parity`, kinds ``peft_oft*``.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from loraworks.lora import LoRAFormatError
from loraworks.lora.formats._common import peft_convention
from loraworks.lora.layers import layer_from_leaves

SETTINGS = [
    {},
    {"use_cayley_neumann": False},
    {"num_cayley_neumann_terms": 2},
    {"num_cayley_neumann_terms": 3},
    {"num_cayley_neumann_terms": 7},
    {"coft": True, "eps": 0.05},
    {"block_share": True},
    {"block_share": True, "coft": True, "eps": 0.05, "use_cayley_neumann": False},
]
TARGETS = ("conv3", "conv1", "linear")


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 16, 1)
        self.linear = nn.Linear(32, 16)


def peft_merged(settings: dict):
    """(original toy, PEFT's merged toy, its state dict, its config as saved)."""
    from peft import OFTConfig, get_peft_model, get_peft_model_state_dict

    torch.manual_seed(0)
    toy = Toy()
    config = OFTConfig(oft_block_size=4, target_modules=list(TARGETS), **settings)
    model = get_peft_model(copy.deepcopy(toy), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "oft_R" in name:
                p.copy_(torch.randn(p.shape) * 0.3)
    sd = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}  # COFT merges in place
    saved = {**config.to_dict(), "peft_type": "OFT"}
    return toy, model.merge_and_unload(), sd, saved


def layer_for(sd, saved, target):
    leaves = {"oft_R": sd[f"base_model.model.{target}.oft_R.weight"]}
    return layer_from_leaves(leaves, peft_convention(saved, target), target)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(map(str, s.items())))
def test_matches_peft_merge(settings):
    toy, merged, sd, saved = peft_merged(settings)
    for target in TARGETS:
        layer = layer_for(sd, saved, target)
        w = getattr(toy, target).weight.detach()
        assert layer.kind == "oft" and layer.check(tuple(w.shape)) is None
        ours = w + layer.residuals({"weight": w, "bias": None}, 1.0)["weight"]
        ref = getattr(merged, target).weight.detach()
        effect = (ref - w).abs().max()
        assert effect > 1e-3, target
        assert (ours - ref).abs().max() / effect < 1e-5, target


def test_rotation_is_orthogonal_when_exact():
    _, _, sd, saved = peft_merged({"use_cayley_neumann": False})
    r = layer_for(sd, saved, "linear").rotation("cpu")
    eye = torch.eye(r.shape[-1]).expand(r.shape)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, atol=1e-5, rtol=0)


@pytest.mark.parametrize("m", [0.5, -1.0, 0.0])
def test_user_weight_interpolates_the_merge(m):
    toy, merged, sd, saved = peft_merged({})
    for target in TARGETS:
        w = getattr(toy, target).weight.detach()
        full = getattr(merged, target).weight.detach() - w
        got = layer_for(sd, saved, target).residuals({"weight": w, "bias": None}, m)["weight"]
        torch.testing.assert_close(got, m * full, atol=1e-6, rtol=1e-5)


def test_bad_files_are_refused_with_the_reason():
    saved = {"peft_type": "OFT", "block_share": True}
    with pytest.raises(LoRAFormatError, match="upper triangle"):
        layer_from_leaves({"oft_R": torch.zeros(2, 5)}, peft_convention(None, "x"), "x")
    with pytest.raises(LoRAFormatError, match="block_share needs one"):
        layer_from_leaves({"oft_R": torch.zeros(2, 6)}, peft_convention(saved, "x"), "x")
    layer = layer_from_leaves({"oft_R": torch.zeros(3, 6)}, peft_convention(None, "x"), "x")
    assert layer.check((16, 12)) is None
    assert "does not fit" in layer.check((16, 8))
    assert "does not fit" in layer.check((16, 2, 3, 3))  # fan-in 18, not 3 blocks of 4
    for leaf, name in (("oft_r", "older layout"), ("boft_R", "PEFT BOFT")):
        with pytest.raises(LoRAFormatError, match=name):
            layer_from_leaves({leaf: torch.zeros(2, 4, 4)}, peft_convention(None, "x"), "x")


PEFT_HOSTILE = {
    "nan": lambda n: torch.full((n, 6), float("nan")),
    "inf": lambda n: torch.full((n, 6), float("inf")),
    "huge": lambda n: torch.full((n, 6), 6e4).half(),  # Q^4 ≈ 1e19: beyond fp16
    "wrong_rows": lambda n: torch.randn(n + 1, 6),
    "not_triangular": lambda n: torch.randn(n, 7),
    "three_dims": lambda n: torch.randn(n, 4, 4),
    "empty": lambda n: torch.zeros(0, 6),
    "integers": lambda n: torch.ones(n, 6, dtype=torch.int64),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", sorted(PEFT_HOSTILE))
def test_hostile_peft_oft_files_are_refused_or_patch_finitely(case, dtype):
    """The kohya OFT suite's contract (`test_oft_hostile`) for PEFT's layout: one oft_R of
    4-wide blocks per UNet attention linear."""
    from tests.fixtures.models import build_components
    from tests.lora.test_oft_hostile import _outcome
    from tests.lora.util import targets

    components = build_components("sd1")
    sd = {
        f"base_model.model.{name}.oft_R.weight": PEFT_HOSTILE[case](mod.weight.shape[1] // 4)
        for comp, name, _, mod in targets(components)
        if comp == "unet"
    }
    outcome = _outcome(components, sd, dtype)  # asserts the contract
    if case != "huge" or dtype == torch.float16:
        assert outcome != "applied", outcome
