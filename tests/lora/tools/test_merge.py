"""merge: --concat patches what stacking the LoRAs in apply_loras patches; SVD merge is the
truncation of the weighted sum; LoRAs of different bases are refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from loraworks.lora import load_lora
from loraworks.lora.tools import (
    IncompatibleModels,
    RankRule,
    UnsupportedKind,
    merge,
    save_lora,
)
from tests.fixtures.models import build_components
from tests.lora.util import kohya_lora

from .helpers import hand_delta, rel_to_effect


@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_concat_of_different_ranks_and_alphas_patches_what_the_stack_patches(tmp_path, base):
    tiny = build_components(base)
    a = load_lora((kohya_lora(tiny, rank=4, alpha=2.0, seed=1), {}), name="a")
    b = load_lora((kohya_lora(tiny, rank=8, alpha=16.0, seed=2), {}), name="b")
    merged = merge([(a, 0.7), (b, -0.4)])
    out = load_lora(save_lora(merged.lora, tmp_path / "m.safetensors"))
    assert {layer.rank for layer in out.layers.values()} == {12}
    assert rel_to_effect(tiny, [(out, 1.0)], [(a, 0.7), (b, -0.4)]) <= 1e-5


def test_svd_merge_is_the_truncated_weighted_sum(tmp_path):
    tiny = build_components("sd1")
    sa, sb = kohya_lora(tiny, rank=4, alpha=2.0, seed=1), kohya_lora(tiny, rank=3, seed=2)
    a, b = load_lora((sa, {}), name="a"), load_lora((sb, {}), name="b")
    out = load_file(
        str(
            save_lora(
                merge([(a, 1.0), (b, 0.5)], RankRule(rank=5)).lora, tmp_path / "s.safetensors"
            )
        )
    )
    for key in {k.rsplit(".", 2)[0] for k in sa if k.endswith("lora_up.weight")}:
        want = hand_delta(sa, key) + 0.5 * hand_delta(sb, key)
        s = torch.linalg.svdvals(want)
        err = float(torch.linalg.matrix_norm(hand_delta(out, key) - want))
        assert err == pytest.approx(float(s[5:].pow(2).sum().sqrt()), rel=1e-4, abs=1e-7)


def test_loras_of_different_bases_are_refused():
    a = load_lora((kohya_lora(build_components("sd1")), {}), name="a")
    b = load_lora((kohya_lora(build_components("sd2")), {}), name="b")
    with pytest.raises(IncompatibleModels, match="different base"):
        merge([(a, 1.0), (b, 1.0)])


def test_concat_refuses_kinds_it_cannot_stack_exactly():
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    loha = {
        f"{key}.hada_w1_a": torch.randn(32, 2),
        f"{key}.hada_w1_b": torch.randn(2, 768),
        f"{key}.hada_w2_a": torch.randn(32, 2),
        f"{key}.hada_w2_b": torch.randn(2, 768),
    }
    with pytest.raises(UnsupportedKind, match="--rank or --dynamic"):
        merge([(load_lora((loha, {}), base="sd1"), 1.0)])
    assert merge([(load_lora((loha, {}), base="sd1"), 1.0)], RankRule(rank=4)).layers
