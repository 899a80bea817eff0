"""Hand-computed formulas for every layer kind (small tensors, explicit loops where it helps)."""

from __future__ import annotations

import math

import pytest
import torch

from loraworks.lora import LoRAFormatError
from loraworks.lora.layers import Convention, layer_from_leaves

PEFT = Convention(producer="peft")
g = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=g)


def res(layer, w, m=1.0, b=None):
    return layer.residuals({"weight": w, "bias": b}, m)


def test_lora_linear_alpha_over_rank():
    up, down = rnd(5, 3), rnd(3, 7)
    w = rnd(5, 7)
    layer = layer_from_leaves(
        {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.5)}
    )
    assert layer.kind == "lora" and layer.rank == 3
    expect = torch.zeros(5, 7)
    for i in range(5):
        for j in range(7):
            expect[i, j] = sum(up[i, k] * down[k, j] for k in range(3))
    torch.testing.assert_close(res(layer, w, 0.8)["weight"], 0.8 * 0.5 * expect)
    # fast path gives the same numbers
    torch.testing.assert_close(layer.add_weight(None, w, 0.8), w + 0.8 * 0.5 * expect)


@pytest.mark.parametrize("alpha", [None, 0.0])
def test_lora_missing_or_zero_alpha_means_rank(alpha):
    leaves = {"lora_up.weight": rnd(4, 2), "lora_down.weight": rnd(2, 4)}
    if alpha is not None:
        leaves["alpha"] = torch.tensor(alpha)
    assert layer_from_leaves(leaves).scale == 1.0


def test_peft_lora_scale_from_config_and_rslora():
    leaves = {"lora_up.weight": rnd(4, 4), "lora_down.weight": rnd(4, 4)}
    assert layer_from_leaves(leaves, Convention("peft", alpha=8)).scale == 2.0
    assert layer_from_leaves(leaves, Convention("peft", alpha=8, rslora=True)).scale == 4.0


def test_locon_conv():
    up, down = rnd(6, 2, 1, 1), rnd(2, 3, 3, 3)
    w = rnd(6, 3, 3, 3)
    layer = layer_from_leaves(
        {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.0)}
    )
    expect = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) * 0.5
    torch.testing.assert_close(res(layer, w)["weight"], expect)
    torch.testing.assert_close(layer.add_weight(None, w, 1.0), w + expect)


def test_locon_tucker_mid():
    up, mid, down = rnd(6, 2, 1, 1), rnd(2, 2, 3, 3), rnd(2, 4, 1, 1)
    layer = layer_from_leaves(
        {"lora_up.weight": up, "lora_mid.weight": mid, "lora_down.weight": down}
    )
    expect = torch.zeros(6, 4, 3, 3)
    for o in range(6):
        for i in range(4):
            for a in range(2):
                for b in range(2):
                    expect[o, i] += up[o, a, 0, 0] * mid[a, b] * down[b, i, 0, 0]
    torch.testing.assert_close(res(layer, rnd(6, 4, 3, 3))["weight"], expect)


def test_conv_lora_on_linear_reshapes():
    # kohya SD1 proj_in LoRA ([r, in, 1, 1]) applied to a linear proj (SD2/SDXL)
    up, down = rnd(4, 2, 1, 1), rnd(2, 5, 1, 1)
    layer = layer_from_leaves({"lora_up.weight": up, "lora_down.weight": down})
    out = res(layer, rnd(4, 5))["weight"]
    torch.testing.assert_close(out, up[:, :, 0, 0] @ down[:, :, 0, 0])


def test_loha_plain_and_tucker():
    w1a, w1b, w2a, w2b = rnd(5, 2), rnd(2, 3), rnd(5, 2), rnd(2, 3)
    layer = layer_from_leaves(
        {
            "hada_w1_a": w1a,
            "hada_w1_b": w1b,
            "hada_w2_a": w2a,
            "hada_w2_b": w2b,
            "alpha": torch.tensor(1.0),
        }
    )
    torch.testing.assert_close(
        res(layer, rnd(5, 3), 2.0)["weight"], 2.0 * 0.5 * (w1a @ w1b) * (w2a @ w2b)
    )
    # Tucker: hada_w?_a [r, out], hada_w?_b [r, in], t [r, r, k, k]
    t1, t2 = rnd(2, 2, 3, 3), rnd(2, 2, 3, 3)
    a1, b1, a2, b2 = rnd(2, 4), rnd(2, 3), rnd(2, 4), rnd(2, 3)
    layer = layer_from_leaves({"hada_t1": t1, "hada_w1_a": a1, "hada_w1_b": b1,
                               "hada_t2": t2, "hada_w2_a": a2, "hada_w2_b": b2})  # fmt: skip

    def rebuild(t, a, b):
        out = torch.zeros(4, 3, 3, 3)
        for p in range(4):
            for r in range(3):
                for i in range(2):
                    for j in range(2):
                        out[p, r] += t[i, j] * a[i, p] * b[j, r]
        return out

    torch.testing.assert_close(
        res(layer, rnd(4, 3, 3, 3))["weight"], rebuild(t1, a1, b1) * rebuild(t2, a2, b2)
    )


def test_lokr_full_matrices_ignore_alpha_in_lycoris_but_not_in_peft():
    w1, w2 = rnd(2, 3), rnd(4, 5)
    leaves = {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(1.0)}
    lyco = layer_from_leaves(leaves)
    assert lyco.scale == 1.0
    torch.testing.assert_close(res(lyco, rnd(8, 15))["weight"], torch.kron(w1, w2))
    peft = layer_from_leaves({"lokr_w1": w1, "lokr_w2": w2}, Convention("peft", alpha=2.0, rank=8))
    assert peft.scale == 0.25
    torch.testing.assert_close(res(peft, rnd(8, 15))["weight"], 0.25 * torch.kron(w1, w2))


def test_lokr_factorised_and_tucker_conv():
    w1, w2a, w2b = rnd(2, 3), rnd(4, 2), rnd(2, 5)
    layer = layer_from_leaves(
        {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(1.0)}
    )
    assert layer.rank == 2 and layer.scale == 0.5
    torch.testing.assert_close(res(layer, rnd(8, 15))["weight"], 0.5 * torch.kron(w1, w2a @ w2b))
    w1a, w1b = rnd(2, 2), rnd(2, 3)
    layer = layer_from_leaves(
        {"lokr_w1_a": w1a, "lokr_w1_b": w1b, "lokr_w2_a": w2a, "lokr_w2_b": w2b}
    )
    torch.testing.assert_close(res(layer, rnd(8, 15))["weight"], torch.kron(w1a @ w1b, w2a @ w2b))
    # conv with Tucker t2: W2 = einsum("i j k l, i p, j r -> p r k l", t2, w2_a, w2_b)
    t2, a, b = rnd(2, 2, 3, 3), rnd(2, 4), rnd(2, 5)
    layer = layer_from_leaves({"lokr_w1": w1, "lokr_t2": t2, "lokr_w2_a": a, "lokr_w2_b": b})
    w2 = torch.einsum("ijkl,ip,jr->prkl", t2, a, b).contiguous()
    expect = torch.kron(w1.reshape(2, 3, 1, 1).contiguous(), w2)
    assert expect.shape == (8, 15, 3, 3)
    torch.testing.assert_close(res(layer, rnd(8, 15, 3, 3))["weight"], expect)
    # conv without Tucker: w2_a @ w2_b is [b, d·k·k], the kron reshapes into [a·b, c·d, k, k]
    b_flat = rnd(2, 5 * 9)
    layer = layer_from_leaves({"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": b_flat})
    w2 = (w2a @ b_flat).reshape(4, 5, 3, 3)
    torch.testing.assert_close(
        res(layer, rnd(8, 15, 3, 3))["weight"], torch.kron(w1.reshape(2, 3, 1, 1).contiguous(), w2)
    )


def test_ia3_lycoris_output_and_input_axis():
    w, b = rnd(3, 4), rnd(3)
    vec = rnd(3)
    layer = layer_from_leaves({"weight": vec, "on_input": torch.tensor(0)})
    out = res(layer, w, 0.5, b)
    torch.testing.assert_close(w + out["weight"], w * (1 + 0.5 * vec)[:, None])
    assert out["bias"] is None  # LyCORIS IA3 leaves the bias alone
    vec = rnd(4)
    layer = layer_from_leaves({"weight": vec, "on_input": torch.tensor(1)})
    torch.testing.assert_close(w + res(layer, w, 1.0)["weight"], w * (1 + vec)[None, :])


def test_ia3_peft_absolute_scale_and_bias():
    w, b = rnd(3, 4), rnd(3)
    l_out = rnd(3, 1)
    layer = layer_from_leaves({"ia3_l": l_out}, PEFT)
    out = res(layer, w, 1.0, b)
    torch.testing.assert_close(w + out["weight"], w * l_out)
    torch.testing.assert_close(b + out["bias"], b * l_out[:, 0])
    half = res(layer, w, 0.5, b)  # m interpolates the scale: 1 + m(l - 1)
    torch.testing.assert_close(w + half["weight"], w * (1 + 0.5 * (l_out - 1)))
    assert torch.equal(res(layer, w, 0.0, b)["weight"], torch.zeros_like(w))
    l_in = rnd(1, 4)  # feed-forward: input axis, bias untouched
    layer = layer_from_leaves({"ia3_l": l_in}, PEFT)
    out = res(layer, w, 1.0, b)
    torch.testing.assert_close(w + out["weight"], w * l_in)
    assert out["bias"] is None
    # conv [1, n, 1, 1] on a square conv: the axis comes from the config
    wc = rnd(3, 3, 1, 1)
    l_c = rnd(1, 3, 1, 1)
    ff = layer_from_leaves({"ia3_l": l_c}, Convention("peft", feedforward=True))
    torch.testing.assert_close(wc + res(ff, wc)["weight"], wc * l_c)
    nf = layer_from_leaves({"ia3_l": l_c}, Convention("peft", feedforward=False))
    torch.testing.assert_close(wc + res(nf, wc)["weight"], wc * l_c.transpose(0, 1))


def test_full_and_norm():
    diff, diff_b = rnd(3, 4), rnd(3)
    layer = layer_from_leaves({"diff": diff, "diff_b": diff_b})
    out = res(layer, rnd(3, 4), -1.0, rnd(3))
    torch.testing.assert_close(out["weight"], -diff)
    torch.testing.assert_close(out["bias"], -diff_b)
    wn, bn = rnd(8), rnd(8)
    layer = layer_from_leaves({"w_norm": wn, "b_norm": bn})
    assert layer.kind == "norm"
    out = res(layer, rnd(8), 0.5, rnd(8))
    torch.testing.assert_close(out["weight"], 0.5 * wn)
    torch.testing.assert_close(out["bias"], 0.5 * bn)


def _lora_leaves(out=4, inn=6, r=2):
    return {
        "lora_up.weight": rnd(out, r),
        "lora_down.weight": rnd(r, inn),
        "alpha": torch.tensor(1.0),
    }


def test_dora_lycoris_output_axis_with_strength():
    leaves = _lora_leaves()
    w = rnd(4, 6)
    dora = rnd(4, 1).abs() + 0.5
    layer = layer_from_leaves({**leaves, "dora_scale": dora})
    dw = 0.5 * leaves["lora_up.weight"] @ leaves["lora_down.weight"]
    v = w + dw
    norm = torch.stack([v[i].norm() for i in range(4)])[:, None]
    torch.testing.assert_close(w + res(layer, w)["weight"], v * dora / norm)
    m = 0.3  # LyCORIS: s = m(dora/‖V‖ − 1) + 1, V at strength 1
    torch.testing.assert_close(w + res(layer, w, m)["weight"], v * (m * (dora / norm - 1) + 1))


def test_dora_lycoris_input_axis():
    leaves = _lora_leaves()
    w = rnd(4, 6)
    dora = rnd(1, 6).abs() + 0.5
    layer = layer_from_leaves({**leaves, "dora_scale": dora})
    v = w + 0.5 * leaves["lora_up.weight"] @ leaves["lora_down.weight"]
    norm = torch.stack([v[:, j].norm() for j in range(6)])[None, :]
    torch.testing.assert_close(w + res(layer, w)["weight"], v * dora / norm)


def test_dora_conv_input_axis():
    up, down = rnd(4, 2, 1, 1), rnd(2, 3, 3, 3)
    w = rnd(4, 3, 3, 3)
    dora = rnd(1, 3, 1, 1).abs() + 0.5
    layer = layer_from_leaves({"lora_up.weight": up, "lora_down.weight": down, "dora_scale": dora})
    v = w + torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    norm = torch.stack([v[:, j].norm() for j in range(3)]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(w + res(layer, w)["weight"], v * dora / norm)


def test_dora_peft_magnitude_scales_inside_the_norm():
    leaves = _lora_leaves()
    del leaves["alpha"]  # PEFT: alpha comes from the config
    w = rnd(4, 6)
    mag = rnd(4).abs() + 0.5
    conv = Convention("peft", alpha=4.0)  # scale alpha/r = 2
    layer = layer_from_leaves({**leaves, "lora_magnitude_vector": mag}, conv)
    m = 0.5
    v = w + m * 2.0 * leaves["lora_up.weight"] @ leaves["lora_down.weight"]
    norm = v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(w + res(layer, w, m)["weight"], mag[:, None] * v / norm)


def test_sparse_bias_is_a_weight_residual():
    leaves = _lora_leaves()
    idx = torch.tensor([[0, 3], [1, 5]], dtype=torch.int16)
    vals = torch.tensor([2.0, -1.0])
    layer = layer_from_leaves(
        {**leaves, "bias_indices": idx, "bias_values": vals, "bias_size": torch.tensor([4, 6])}
    )
    w = rnd(4, 6)
    dense = torch.zeros(4, 6)
    dense[0, 1], dense[3, 5] = 2.0, -1.0
    want = 0.5 * 0.5 * leaves["lora_up.weight"] @ leaves["lora_down.weight"] + 0.5 * dense
    torch.testing.assert_close(res(layer, w, 0.5)["weight"], want)


def test_unknown_and_broken_layers_name_the_keys():
    with pytest.raises(LoRAFormatError, match="foo_bar"):
        layer_from_leaves({"foo_bar": rnd(2)}, name="lora_unet_x")
    with pytest.raises(LoRAFormatError, match=r"lora_unet_x.*mystery"):
        layer_from_leaves({**_lora_leaves(), "mystery": rnd(1)}, name="lora_unet_x")
    with pytest.raises(LoRAFormatError, match=r"lora_down\.weight"):
        layer_from_leaves({"lora_up.weight": rnd(3, 2)})
    with pytest.raises(LoRAFormatError, match="BOFT oft_blocks must be"):
        layer_from_leaves({"oft_blocks": rnd(1, 2, 3, 3)})  # odd blocks cannot pair rows
    with pytest.raises(LoRAFormatError, match="3 butterfly stages do not fit 2 blocks"):
        layer_from_leaves({"oft_blocks": rnd(3, 2, 2, 2)})
    with pytest.raises(LoRAFormatError, match=r"LyCORIS 2 layout \(oft_diag\)"):
        layer_from_leaves({"oft_diag": rnd(2, 2, 2)})
    with pytest.raises(LoRAFormatError, match="rank"):
        layer_from_leaves({"lora_up.weight": rnd(3, 2), "lora_down.weight": rnd(3, 4)})
    assert math.isfinite(layer_from_leaves(_lora_leaves()).scale)


def test_oft_is_an_orthogonal_turn_of_each_block_of_rows():
    """Cayley R of a skew-symmetric Q is orthogonal, so at m = 1 each block of rows keeps its
    norms (rotated, not scaled); a block count that does not fit the weight is refused."""
    layer = layer_from_leaves({"oft_blocks": rnd(3, 4, 4), "alpha": torch.tensor(0.0)})
    w = rnd(12, 5)
    turned = w + res(layer, w, 1.0)["weight"]
    for k in range(3):
        rows, new = w[4 * k : 4 * k + 4], turned[4 * k : 4 * k + 4]
        torch.testing.assert_close(new.T @ new, rows.T @ rows)  # Gram matrix of the columns
    assert "does not fit" in layer.check((10, 5)) and layer.check((12, 5)) is None


def test_peft_lora_bias():
    up, down, ub = rnd(4, 2), rnd(2, 3), rnd(4)
    layer = layer_from_leaves(
        {"lora_up.weight": up, "lora_down.weight": down, "lora_up.bias": ub},
        Convention("peft", alpha=4),
    )
    assert layer.touches_bias
    out = res(layer, rnd(4, 3), 0.5, rnd(4))
    torch.testing.assert_close(out["bias"], 0.5 * 2.0 * ub)


def test_sparse_bias_out_of_range_is_a_format_error():
    leaves = _lora_leaves()
    bad = {"bias_indices": torch.tensor([[0], [9]]), "bias_values": torch.tensor([1.0]),
           "bias_size": torch.tensor([4, 6])}  # fmt: skip
    with pytest.raises(LoRAFormatError, match="outside"):
        layer_from_leaves({**leaves, **bad})


def test_glora_both_layouts_by_hand():
    """LyCORIS ≥ 2: ΔW = m·(α/r)·(W·a1·a2 + b1·b2) over the input channels (a conv's 1x1 a
    factors, its b2 with the kernel); the first LyCORIS layout: m·(α/r)·(W·a2·a1 + b2·b1), W
    flat. (The parity suite checks today's layout against LyCORIS 4.1.3's own forward.)"""
    out, cin, r, k = 6, 5, 2, 3
    w = rnd(out, cin, k, k)
    a1, a2, b1, b2 = rnd(cin, r, 1, 1), rnd(r, cin, 1, 1), rnd(out, r, 1, 1), rnd(r, cin, k, k)
    alpha = torch.tensor(3.0)
    leaves = {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2, "alpha": alpha}
    layer = layer_from_leaves(leaves)
    assert layer.kind == "glora" and not layer.old and layer.check(tuple(w.shape)) is None
    expect = torch.zeros(out, cin, k, k)
    for o in range(out):
        for j in range(cin):
            for i in range(cin):
                turn = sum(a1[i, q, 0, 0] * a2[q, j, 0, 0] for q in range(r))
                expect[o, j] += w[o, i] * turn
            expect[o, j] += sum(b1[o, q, 0, 0] * b2[q, j] for q in range(r))
    got = res(layer, w, 0.7)["weight"]
    torch.testing.assert_close(got, 0.7 * 1.5 * expect, rtol=1e-5, atol=1e-5)
    assert "does not fit" in layer.check((out, cin + 1, k, k))

    fan_in = cin * k * k
    o1, o2, p1, p2 = rnd(r, fan_in), rnd(fan_in, r), rnd(r, fan_in), rnd(out, r)
    old = layer_from_leaves(
        {"a1.weight": o1, "a2.weight": o2, "b1.weight": p1, "b2.weight": p2, "alpha": alpha}
    )
    assert old.old and old.rank == r and old.check(tuple(w.shape)) is None
    flat = w.reshape(out, -1)
    expect_old = (flat @ o2 @ o1 + p2 @ p1).reshape(w.shape)
    torch.testing.assert_close(res(old, w, -1.0)["weight"], -1.5 * expect_old)
    with pytest.raises(LoRAFormatError, match="do not chain"):
        layer_from_leaves(
            {"a1.weight": o1, "a2.weight": o2, "b1.weight": p1, "b2.weight": rnd(6, 3)}
        )
