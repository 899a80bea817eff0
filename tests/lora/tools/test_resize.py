"""resize: at rank ≥ the file's it reproduces the patched model; below, each layer's error is
the SVD truncation error of its ΔW computed here independently; dynamic rules as kohya defines
them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from loraworks.lora import load_lora
from loraworks.lora.tools import RankError, RankRule, resize, save_lora
from tests.fixtures.models import build_components
from tests.lora.util import kohya_lora

from .helpers import hand_delta, rel_to_effect


@pytest.mark.parametrize("base", ["sd1", "sdxl"])
@pytest.mark.parametrize("rank", [4, 9])
def test_rank_at_or_above_the_files_reproduces_the_patched_model(tmp_path, base, rank):
    tiny = build_components(base)
    lora = load_lora((kohya_lora(tiny, rank=4, alpha=2.0), {}), name="src")
    out = save_lora(resize(lora, RankRule(rank=rank)).lora, tmp_path / "r.safetensors")
    again = load_lora(out)
    assert {layer.rank for layer in again.layers.values()} == {4}
    assert rel_to_effect(tiny, [(again, 0.8)], [(lora, 0.8)]) <= 1e-4


def _singular_values(sd, key):
    return torch.linalg.svdvals(hand_delta(sd, key))


def test_lower_rank_error_is_the_svd_truncation_error(tmp_path):
    tiny = build_components("sd1")
    sd = kohya_lora(tiny, rank=6, alpha=3.0, seed=3)
    result = resize(load_lora((sd, {})), RankRule(rank=2))
    out = load_file(str(save_lora(result.lora, tmp_path / "r2.safetensors")))
    keys = {k.rsplit(".", 2)[0] for k in sd if k.endswith("lora_up.weight")}
    assert len(keys) == len(result.layers) > 10
    for key in keys:  # SD1: our kohya names are the source's
        s = _singular_values(sd, key)
        want = float(s[2:].pow(2).sum().sqrt())
        got = float(torch.linalg.matrix_norm(hand_delta(sd, key) - hand_delta(out, key)))
        assert got == pytest.approx(want, rel=1e-4), key
        assert out[key + ".lora_down.weight"].shape[0] == 2
    report = {r.target: r for r in result.layers}
    some = next(iter(report.values()))
    assert some.rank == 2 and some.rank_before == 6 and 0 < some.retained < 1


def _hand_rank(s: torch.Tensor, method: str, x: float) -> int:
    """kohya's definitions, written out: the fewest k reaching the target (sv_ratio: count)."""
    s = s.double()
    if method == "sv_ratio":
        return int((s > s[0] / x).sum())
    for k in range(1, len(s) + 1):
        if method == "sv_fro" and float(s[:k].pow(2).sum().sqrt() / s.pow(2).sum().sqrt()) >= x:
            return k
        if method == "sv_cumulative" and float(s[:k].sum() / s.sum()) >= x:
            return k
    return len(s)


@pytest.mark.parametrize(
    ("method", "x"), [("sv_fro", 0.9), ("sv_cumulative", 0.7), ("sv_ratio", 3.0)]
)
def test_dynamic_rules_keep_what_kohya_defines(tmp_path, method, x):
    tiny = build_components("sd1")
    sd = kohya_lora(tiny, rank=8, alpha=8.0, seed=5)
    result = resize(load_lora((sd, {})), RankRule(method=method, target=x))
    out = load_file(str(save_lora(result.lora, tmp_path / "d.safetensors")))
    keys = {k.rsplit(".", 2)[0] for k in sd if k.endswith("lora_up.weight")}
    ranks = set()
    for key in keys:
        s = _singular_values(sd, key)
        k = out[key + ".lora_down.weight"].shape[0]
        ranks.add(k)
        assert k == _hand_rank(s, method, x), key
        if method == "sv_fro":
            kept = torch.linalg.matrix_norm(hand_delta(out, key))
            assert float(kept / torch.linalg.matrix_norm(hand_delta(sd, key))) >= 0.9 - 1e-6
    assert len(ranks) > 1 or method != "sv_fro"  # a random LoRA: the ranks differ per layer


def test_a_loha_comes_out_as_lora_with_its_exact_delta(tmp_path):
    """LoHa ΔW = α/r·(w1a@w1b)⊙(w2a@w2b), rank ≤ r²: resized to r² it is reproduced."""
    g = torch.Generator().manual_seed(0)
    key, r = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 2
    sd = {
        f"{key}.hada_w1_a": torch.randn(32, r, generator=g),
        f"{key}.hada_w1_b": torch.randn(r, 768, generator=g),
        f"{key}.hada_w2_a": torch.randn(32, r, generator=g),
        f"{key}.hada_w2_b": torch.randn(r, 768, generator=g),
        f"{key}.alpha": torch.tensor(1.0),
    }
    want = (sd[f"{key}.hada_w1_a"] @ sd[f"{key}.hada_w1_b"]).double()
    want = want * (sd[f"{key}.hada_w2_a"] @ sd[f"{key}.hada_w2_b"]).double() / r
    for rank, expect_exact in ((r * r, True), (2, False)):
        res = resize(load_lora((sd, {}), base="sd1"), RankRule(rank=rank))
        out = load_file(str(save_lora(res.lora, tmp_path / f"h{rank}.safetensors")))
        err = float(torch.linalg.matrix_norm(hand_delta(out, key) - want))
        s = torch.linalg.svdvals(want)
        cut = float(s[rank:].pow(2).sum().sqrt())  # fp32 factors: ~1e-7 of ‖ΔW‖ on top
        assert err == pytest.approx(cut, rel=1e-4, abs=1e-6 * float(s.norm()))
        assert (err <= 1e-4 * float(s.norm())) == expect_exact


@pytest.mark.parametrize("rank", [0, -1, 33])
def test_a_rank_of_zero_or_above_a_layers_dimensions_is_refused(rank):
    lora = load_lora((kohya_lora(build_components("sd1")), {}))
    with pytest.raises(RankError, match="rank"):
        resize(lora, RankRule(rank=rank))


@pytest.mark.parametrize("dynamic", ["sv_fro=1.5", "sv_ratio=0.5", "sv_cumulative=0", "x=1", "a"])
def test_bad_dynamic_rules_are_refused(dynamic):
    with pytest.raises(RankError):
        RankRule.parse(None, dynamic)
