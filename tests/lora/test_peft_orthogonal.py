"""PEFT OFT (``oft_R``) and BOFT (``boft_R``/``boft_s``) against PEFT 0.21's own merge on a
linear, a 1x1 and a 3x3 conv, for each of OFT's rotation settings and BOFT with 1–3 butterfly
stages; the user weight against the interpolation formula; bad files. (Whole-model parity
through PEFT's forward: `tests/lora_parity`, kinds ``peft_oft*``, ``peft_boft``.)"""

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
    {"coft": True, "eps": 0.2},
    {"block_share": True},
    {"block_share": True, "coft": True, "eps": 0.2, "use_cayley_neumann": False},
]
TARGETS = ("conv3", "conv1", "linear")


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 1)
        self.linear = nn.Linear(32, 16)


def peft_merged(settings: dict, kind: str = "oft"):
    """(original toy, PEFT's merged toy, its state dict, its config as saved)."""
    from peft import BOFTConfig, OFTConfig, get_peft_model, get_peft_model_state_dict

    torch.manual_seed(0)
    toy = Toy()
    make = {"oft": OFTConfig, "boft": BOFTConfig}[kind]
    size = {"oft": "oft_block_size", "boft": "boft_block_size"}[kind]
    config = make(target_modules=list(TARGETS), **{size: 4, **settings})
    model = get_peft_model(copy.deepcopy(toy), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "oft_R" in name:
                p.copy_(torch.randn(p.shape) * 0.3)
            elif "boft_s" in name:
                p.copy_(1 + torch.randn(p.shape) * 0.1)
    sd = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}  # COFT merges in place
    saved = {**config.to_dict(), "peft_type": kind.upper()}
    return toy, model.merge_and_unload(), sd, saved


def layer_for(sd, saved, target):
    prefix = f"base_model.model.{target}."
    leaves = {
        k[len(prefix) :].removesuffix(".weight"): v for k, v in sd.items() if k.startswith(prefix)
    }
    return layer_from_leaves(leaves, peft_convention(saved, target), target)


def assert_merges_alike(toy, merged, sd, saved, kind):
    for target in TARGETS:
        layer = layer_for(sd, saved, target)
        w = getattr(toy, target).weight.detach()
        assert layer.kind == kind and layer.check(tuple(w.shape)) is None
        ours = w + layer.residuals({"weight": w, "bias": None}, 1.0)["weight"]
        ref = getattr(merged, target).weight.detach()
        effect = (ref - w).abs().max()
        assert effect > 1e-3, target
        assert (ours - ref).abs().max() / effect < 1e-5, target


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(map(str, s.items())))
def test_oft_matches_peft_merge(settings):
    assert_merges_alike(*peft_merged(settings), "oft")


@pytest.fixture(autouse=True)
def no_cuda_kernel(monkeypatch):
    """PEFT's BOFT tries to compile a CUDA kernel when a layer is made; never here."""
    from peft.tuners.boft import layer as boft

    monkeypatch.setattr(boft, "get_fbd_cuda", lambda: None)


@pytest.fixture
def butterflies(monkeypatch):
    """PEFT builds butterfly stages only with its CUDA block-diagonal kernel, else it uses one
    stage: stand in for the kernel (N stacked [D, b, b] blocks → N block-diagonal matrices)."""
    from peft.tuners.boft import layer as boft

    monkeypatch.setattr(boft, "get_fbd_cuda", lambda: True)
    monkeypatch.setattr(
        boft.FastBlockDiag, "apply", lambda r: torch.stack([torch.block_diag(*s) for s in r])
    )


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_boft_matches_peft_merge(factor, butterflies):
    toy, merged, sd, saved = peft_merged({"boft_n_butterfly_factor": factor}, "boft")
    stages = {sd[k].shape[0] for k in sd if k.endswith("boft_R")}
    assert stages == {factor}
    assert_merges_alike(toy, merged, sd, saved, "boft")


def test_rotation_is_orthogonal_when_exact():
    _, _, sd, saved = peft_merged({"use_cayley_neumann": False})
    r = layer_for(sd, saved, "linear").rotation("cpu")
    eye = torch.eye(r.shape[-1]).expand(r.shape)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["oft", "boft"])
@pytest.mark.parametrize("m", [0.5, -1.0, 0.0])
def test_user_weight_interpolates_the_merge(m, kind):
    toy, merged, sd, saved = peft_merged({}, kind)
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
    with pytest.raises(LoRAFormatError, match="older layout"):
        layer_from_leaves({"oft_r": torch.zeros(2, 4, 4)}, peft_convention(None, "x"), "x")


def test_bad_boft_files_are_refused_with_the_reason():
    def build(r, s):
        return layer_from_leaves({"boft_R": r, "boft_s": s}, peft_convention(None, "x"), "x")

    with pytest.raises(LoRAFormatError, match="missing boft_s"):
        layer_from_leaves({"boft_R": torch.zeros(1, 2, 4, 4)}, peft_convention(None, "x"), "x")
    with pytest.raises(LoRAFormatError, match=r"boft_R must be"):
        build(torch.zeros(2, 4, 4), torch.ones(8, 1))
    with pytest.raises(LoRAFormatError, match="divisible by 4"):
        build(torch.zeros(3, 6, 4, 4), torch.ones(8, 1))
    with pytest.raises(LoRAFormatError, match="even block size"):
        build(torch.zeros(2, 4, 3, 3), torch.ones(8, 1))
    with pytest.raises(LoRAFormatError, match="boft_s must be"):
        build(torch.zeros(1, 2, 4, 4), torch.ones(8))
    layer = build(torch.zeros(2, 4, 4, 4), torch.ones(1, 16))
    assert layer.check((16, 16)) is None and layer.check((16, 4, 2, 2)) is None
    assert "does not fit" in layer.check((16, 8)) and "does not fit" in layer.check((12, 16))


def _oft(vec):
    return lambda n, out: {"oft_R.weight": vec(n)}


def _boft(blocks=None, scale=None):
    """One-stage BOFT leaves, sound unless `blocks(n)` / `scale(out)` say otherwise."""
    return lambda n, out: {
        "boft_R": blocks(n) if blocks else torch.randn(1, n, 4, 4) * 0.1,
        "boft_s": scale(out) if scale else torch.ones(out, 1),
    }


# per UNet attention linear, from its fan-in in blocks of 4 (n) and its rows (out); the
# file is refused (at load or before patching), or patches finitely and restores (`_outcome`)
PEFT_HOSTILE = {
    "oft_nan": _oft(lambda n: torch.full((n, 6), float("nan"))),
    "oft_inf": _oft(lambda n: torch.full((n, 6), float("inf"))),
    "oft_huge": _oft(lambda n: torch.full((n, 6), 6e4).half()),  # Q^4 ≈ 1e19: beyond fp16
    "oft_wrong_rows": _oft(lambda n: torch.randn(n + 1, 6)),
    "oft_not_triangular": _oft(lambda n: torch.randn(n, 7)),
    "oft_three_dims": _oft(lambda n: torch.randn(n, 4, 4)),
    "oft_empty": _oft(lambda n: torch.zeros(0, 6)),
    "oft_integers": _oft(lambda n: torch.ones(n, 6, dtype=torch.int64)),
    "boft_nan": _boft(blocks=lambda n: torch.full((1, n, 4, 4), float("nan"))),
    "boft_scale_inf": _boft(scale=lambda out: torch.full((out, 1), float("inf"))),
    "boft_scale_huge": _boft(scale=lambda out: torch.full((out, 1), 1e38)),  # beyond fp16
    "boft_wrong_blocks": _boft(blocks=lambda n: torch.randn(1, n + 1, 4, 4)),
    "boft_scale_wrong_size": _boft(scale=lambda out: torch.ones(out + 1, 1)),
    "boft_three_dims": _boft(blocks=lambda n: torch.randn(n, 4, 4)),
    "boft_odd_stages": _boft(blocks=lambda n: torch.randn(2, n, 3, 3)),
}
#: fits fp32 (so it may patch there), not fp16
FP32_FINITE = {"oft_huge", "boft_scale_huge"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", sorted(PEFT_HOSTILE))
def test_hostile_peft_oft_and_boft_files_are_refused_or_patch_finitely(case, dtype):
    """The kohya OFT suite's contract (`test_oft_hostile`) for PEFT's layouts: one layer of
    4-wide blocks per UNet attention linear."""
    from tests.fixtures.models import build_components
    from tests.lora.test_oft_hostile import _outcome
    from tests.lora.util import targets

    components = build_components("sd1")
    sd = {
        f"base_model.model.{name}.{leaf}": t
        for comp, name, _, mod in targets(components)
        if comp == "unet"
        for leaf, t in PEFT_HOSTILE[case](mod.weight.shape[1] // 4, mod.weight.shape[0]).items()
    }
    outcome = _outcome(components, sd, dtype)  # asserts the contract
    if case not in FP32_FINITE or dtype == torch.float16:
        assert outcome != "applied", outcome
