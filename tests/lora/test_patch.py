"""apply_loras / LoRAPatcher: formula, restore, lock, strict mode, errors before patching."""

from __future__ import annotations

import random

import pytest
import torch

from loraworks.lora import (
    LoRABaseMismatch,
    LoRABusy,
    LoRAError,
    LoRAPatcher,
    LoRAShapeError,
    LoRAUnmatchedKeys,
    apply_loras,
    load_lora,
)
from tests.fixtures.models import build_components
from tests.lora.util import assert_bit_exact, kohya_lora, snapshot


def _apply_and_exit(pipe, stack, **kw):
    with apply_loras(pipe, stack, **kw):
        pass


def _attn2_k(base):
    blk = "down_blocks.1" if base == "sdxl" else "down_blocks.0"
    return f"{blk}.attentions.0.transformer_blocks.0.attn2.to_k"


def test_kohya_lora_patches_the_formula(tiny, base):
    lora = load_lora((kohya_lora(tiny, rank=4, alpha=2.0), {}))
    assert lora.base == base and lora.format == "kohya"
    name = _attn2_k(base)
    w0 = tiny.unet.get_submodule(name).weight.detach().clone()
    layer = lora.layers["unet." + name]
    with apply_loras(tiny.as_mapping(), [(lora, 0.8)]) as report:
        assert not report.unmatched
        w = tiny.unet.get_submodule(name).weight
        torch.testing.assert_close(w, w0 + 0.8 * 0.5 * layer.up @ layer.down, rtol=0, atol=1e-6)
        # text encoder patched too (both transformers layouts resolve)
        te = tiny.text_encoder
        q = next(m for n, m in te.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
        assert report.applied == len(lora.layers)
        assert q.weight is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_restore_is_bit_exact_also_on_exception(base, dtype):
    c = build_components(base)
    for m in c.as_mapping().values():
        m.to(dtype)
    snap = snapshot(c)
    params = {id(p) for m in c.as_mapping().values() for p in m.parameters()}
    a = load_lora((kohya_lora(c, seed=1), {}))
    b = load_lora((kohya_lora(c, seed=2, rank=8), {}))
    with apply_loras(c.as_mapping(), [(a, 0.7), (b, {"unet": -1.0, "text_encoder": 0.3})]):
        changed = snapshot(c)
        assert any(not torch.equal(changed[k], snap[k]) for k in snap)
    assert_bit_exact(c, snap)
    with pytest.raises(RuntimeError, match="boom"), apply_loras(c.as_mapping(), [(a, 1.0)]):
        raise RuntimeError("boom")
    assert_bit_exact(c, snap)
    # same Parameter objects throughout
    assert params == {id(p) for m in c.as_mapping().values() for p in m.parameters()}


def test_patch_rounds_once_in_low_precision():
    c = build_components("sd1")
    c.unet.to(torch.float16)
    lora = load_lora((kohya_lora(c), {}))
    name = _attn2_k("sd1")
    w0 = c.unet.get_submodule(name).weight.detach().clone()
    layer = lora.layers["unet." + name]
    with apply_loras({"unet": c.unet}, [(lora, 1.0)]):
        got = c.unet.get_submodule(name).weight
        want = (w0.float() + 0.5 * layer.up @ layer.down).half()
        assert got.dtype == torch.float16
        assert torch.equal(got, want)


def test_several_loras_add(tiny):
    a = load_lora((kohya_lora(tiny, seed=1), {}))
    b = load_lora((kohya_lora(tiny, seed=2), {}))
    name = "unet." + _attn2_k(tiny.base)
    w0 = tiny.unet.get_submodule(name[5:]).weight.detach().clone()
    da = a.layers[name].up @ a.layers[name].down * a.layers[name].scale
    db = b.layers[name].up @ b.layers[name].down * b.layers[name].scale
    with apply_loras(tiny.as_mapping(), [(a, 0.5), (b, -1.5)]):
        w = tiny.unet.get_submodule(name[5:]).weight
        torch.testing.assert_close(w, w0 + 0.5 * da - 1.5 * db, rtol=0, atol=1e-6)


def test_component_weights_dict(tiny):
    lora = load_lora((kohya_lora(tiny), {}))
    snap = snapshot(tiny)
    with apply_loras(tiny.as_mapping(), [(lora, {"unet": 1.0})]) as report:
        now = snapshot(tiny)
        changed = [k for k in snap if not torch.equal(now[k], snap[k])]
        te_changed = [k for k in changed if k.startswith("text_encoder")]
        unet_changed = [k for k in changed if k.startswith("unet.")]
        assert not te_changed and unet_changed
        assert report.skipped
    with pytest.raises(LoRAError, match="unknown component"):
        _apply_and_exit(tiny.as_mapping(), [(lora, {"te": 1.0})])


def test_weight_zero_is_a_no_op(tiny):
    lora = load_lora((kohya_lora(tiny), {}))
    snap = snapshot(tiny)
    with apply_loras(tiny.as_mapping(), [(lora, 0.0)]) as report:
        assert_bit_exact(tiny, snap)
        assert report.applied == 0


def test_wrong_base_raises_before_touching(base):
    c = build_components(base)
    other = {"sd1": "sdxl", "sd2": "sd1", "sdxl": "sd2"}[base]
    lora = load_lora((kohya_lora(build_components(other)), {}))
    snap = snapshot(c)
    with pytest.raises(LoRABaseMismatch) as e:
        _apply_and_exit(c.as_mapping(), [(lora, 1.0)])
    assert other in str(e.value) and base in str(e.value)
    assert_bit_exact(c, snap)


def test_nested_apply_on_same_model_is_refused(tiny):
    lora = load_lora((kohya_lora(tiny), {}))
    snap = snapshot(tiny)
    with apply_loras(tiny.as_mapping(), [(lora, 1.0)]):
        inner = snapshot(tiny)
        with pytest.raises(LoRABusy, match="already patched"):
            _apply_and_exit(tiny.as_mapping(), [(lora, 1.0)])
        assert_bit_exact(tiny, inner)  # the refused apply changed nothing
    assert_bit_exact(tiny, snap)
    with apply_loras(tiny.as_mapping(), [(lora, 1.0)]):  # lock released
        pass


def test_unmatched_reported_and_strict(tiny):
    sd = kohya_lora(tiny)
    sd["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.zeros(4, 64)
    sd["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.zeros(64, 4)
    lora = load_lora((sd, {}))
    snap = snapshot(tiny)
    with apply_loras(tiny.as_mapping(), [(lora, 1.0)]) as report:
        assert len(report.unmatched) == 1 and "down_blocks.9" in report.unmatched[0]
    with pytest.raises(LoRAUnmatchedKeys, match=r"down_blocks\.9"):
        _apply_and_exit(tiny.as_mapping(), [(lora, 1.0)], strict=True)
    assert_bit_exact(tiny, snap)


def test_shape_mismatch_patches_nothing(tiny):
    sd = kohya_lora(tiny)
    key = next(k for k in sd if k.endswith("lora_down.weight") and "attn1_to_q" in k)
    sd[key] = torch.zeros(4, sd[key].shape[1] + 1)
    lora = load_lora((sd, {}))
    snap = snapshot(tiny)
    with pytest.raises(LoRAShapeError, match="does not fit"):
        _apply_and_exit(tiny.as_mapping(), [(lora, 1.0)])
    assert_bit_exact(tiny, snap)


def test_patcher_set_is_noop_when_unchanged(tiny):
    a = load_lora((kohya_lora(tiny, seed=1), {}))
    b = load_lora((kohya_lora(tiny, seed=2), {}))
    snap = snapshot(tiny)
    p = LoRAPatcher(tiny.as_mapping())
    r1 = p.set([(a, 0.8)])
    name = _attn2_k(tiny.base)
    t1 = tiny.unet.get_submodule(name).weight.data_ptr()
    r2 = p.set([(a, 0.8)])
    assert r2 is r1 and tiny.unet.get_submodule(name).weight.data_ptr() == t1
    p.set([(a, 0.8), (b, 0.2)])
    assert p.current[1][0] is b
    with apply_loras({"unet": tiny.unet}, []):  # empty stack never claims the model
        pass
    with pytest.raises(LoRABusy):
        _apply_and_exit(tiny.as_mapping(), [(a, 1.0)])
    p.set([])
    assert_bit_exact(tiny, snap)
    p.set([(b, 1.0)])
    p.restore()
    assert p.current == ()
    assert_bit_exact(tiny, snap)


def test_random_apply_restore_sequences():
    rng = random.Random(0)
    c = build_components("sd1")
    c.unet.half()
    loras = [load_lora((kohya_lora(c, seed=s, rank=rng.choice([1, 4, 8])), {})) for s in range(4)]
    snap = snapshot(c)
    p = LoRAPatcher(c.as_mapping())
    for _ in range(20):
        stack = [(lo, rng.choice([-1.0, 0.3, 1.0])) for lo in rng.sample(loras, rng.randint(0, 3))]
        if rng.random() < 0.5:
            p.set(stack)
        else:
            try:
                with apply_loras(c.as_mapping(), stack):
                    raise KeyError
            except (KeyError, LoRABusy):
                pass
    p.restore()
    assert_bit_exact(c, snap)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_switching_reuses_storage_and_stays_exact(dtype):
    c = build_components("sd1")
    for m in c.as_mapping().values():
        m.to(dtype)
    snap = snapshot(c)
    a = load_lora((kohya_lora(c, seed=1), {}))
    b = load_lora((kohya_lora(c, seed=2), {}))
    name = _attn2_k("sd1")
    param = c.unet.get_submodule(name).weight
    p = LoRAPatcher(c.as_mapping())
    p.set([(a, 1.0)])
    ptr_a = param.data_ptr()
    p.set([(b, 0.5)])
    assert param.data_ptr() == ptr_a  # same storage, new values
    fresh = build_components("sd1")
    for m in fresh.as_mapping().values():
        m.to(dtype)
    with apply_loras(fresh.as_mapping(), [(b, 0.5)]):
        want = {k: v.detach().clone() for k, v in fresh.unet.state_dict().items()}
    got = c.unet.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)  # identical to a fresh patch
    p.restore()
    assert_bit_exact(c, snap)
    kept = LoRAPatcher(c.as_mapping(), keep_buffers=True)
    kept.set([(a, 1.0)])
    ptr = param.data_ptr()
    kept.restore()
    assert_bit_exact(c, snap)
    kept.set([(a, 1.0)])
    assert param.data_ptr() == ptr
    kept.restore()
    kept.release_buffers()
    assert_bit_exact(c, snap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_overflowing_patch_is_refused_and_nothing_changes(dtype):
    c = build_components("sd1")
    c.unet.to(dtype)
    sd = kohya_lora(c)
    key = next(k for k in sd if k.endswith(".alpha") and k.startswith("lora_unet_"))
    sd[key] = torch.tensor(1e9)  # huge alpha: overflows fp16
    lora = load_lora((sd, {}))
    weight = 1.0 if dtype == torch.float16 else 1e35  # and a huge weight overflows fp32
    snap = snapshot(c)
    with pytest.raises(LoRAError, match="not be finite"):
        _apply_and_exit(c.as_mapping(), [(lora, weight)])
    assert_bit_exact(c, snap)
    _apply_and_exit(c.as_mapping(), [(lora, 0.0)])  # the lock was released


def test_a_lora_cast_past_its_range_is_refused_on_patch():
    """Values finite in the file but beyond fp16's range become inf in `LoRA.to(fp16)`: the
    overflow bound (from max|x| measured at load) must see that, not the file's numbers."""
    c = build_components("sd1")
    c.unet.to(torch.float16)
    sd = kohya_lora(c)
    key = next(k for k in sd if k.endswith("lora_up.weight") and k.startswith("lora_unet_"))
    down = key.replace("lora_up", "lora_down")
    sd[down] = sd[down].float() / sd[down].float().abs().max() * 1e-4  # small bound otherwise
    sd[key] = sd[key].float().clone()
    sd[key][0, 0] = 7e4  # finite in fp32, inf in fp16 (max 65504)
    lora = load_lora((sd, {})).to(dtype=torch.float16)
    snap = snapshot(c)
    with pytest.raises(LoRAError, match="not be finite"):
        _apply_and_exit(c.as_mapping(), [(lora, 1.0)])
    assert_bit_exact(c, snap)


def test_a_stack_that_cannot_fit_in_memory_is_refused_before_any_change(monkeypatch):
    from types import SimpleNamespace

    c = build_components("sd1")
    lora = load_lora((kohya_lora(c), {}))
    snap = snapshot(c)
    fake = SimpleNamespace(available=1024)  # 1 KiB free
    monkeypatch.setattr("loraworks.lora.staging.psutil.virtual_memory", lambda: fake)
    with pytest.raises(LoRAError, match=r"needs about .* GiB of cpu memory.*nothing is patched"):
        _apply_and_exit(c.as_mapping(), [(lora, 1.0)])
    assert_bit_exact(c, snap)


def test_free_cuda_memory_counts_what_the_caching_allocator_holds_unused(monkeypatch):
    """Freed patched weights stay in PyTorch's CUDA cache; they are free to the next stack."""
    from loraworks.lora import free_bytes

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev: 5 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: 3 * gib)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda dev: 1.0)
    assert free_bytes(torch.device("cuda", 0)) == 3 * gib
    assert free_bytes(torch.device("meta")) is None


def test_staged_layer_copies_patch_the_same_weights_and_leave_the_lora_alone(monkeypatch):
    """The staging path (`stage`, taken for a host LoRA on a GPU model) forced on the CPU:
    the copies patch what the LoRA's own layers patch, and the LoRA keeps its layer objects
    and tensors. (On a GPU: `test_a_host_lora_on_a_cuda_model_on_its_device`.)"""
    from loraworks.lora import patcher, staging

    c = build_components("sd1")
    lora = load_lora((kohya_lora(c), {}))
    with apply_loras(c.as_mapping(), [(lora, 0.8)]):
        want = snapshot(c)
    layers = dict(lora.layers)
    tensors = {k: dict(v.all_tensors()) for k, v in layers.items()}
    staged: list[int] = []

    def every_layer(targets):
        out = {torch.device("cpu"): [layer for t in targets for layer, _ in t.items]}
        staged.append(len(out[torch.device("cpu")]))
        return out

    monkeypatch.setattr(patcher, "layers_away", every_layer)
    monkeypatch.setattr(staging, "same_device", lambda _a, _b: False)  # copy, as to a GPU
    with apply_loras(c.as_mapping(), [(lora, 0.8)]) as report:
        got = snapshot(c)
    assert staged == [len(layers)] and report.applied == len(layers)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert lora.layers == layers
    for k, layer in lora.layers.items():
        assert all(t is tensors[k][leaf] for leaf, t in layer.all_tensors().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_a_host_lora_on_a_cuda_model_on_its_device():
    """A LoRA left in host memory patches a GPU model through one staged copy (`stage`): the
    same weights as the LoRA moved there first, the LoRA itself still on the host, the model
    restored bit for bit."""
    c = build_components("sd1")
    for m in c.as_mapping().values():
        m.to("cuda", torch.float16)
    snap = snapshot(c)
    host = load_lora((kohya_lora(c), {}))  # drawn on the host whatever the model's device
    moved = load_lora((kohya_lora(c), {})).to("cuda")
    with apply_loras(c.as_mapping(), [(moved, 0.8)]):
        want = snapshot(c)
    assert_bit_exact(c, snap)
    with apply_loras(c.as_mapping(), [(host, 0.8)]):
        got = snapshot(c)
    assert_bit_exact(c, snap)
    assert host.device.type == "cpu"
    assert all(torch.equal(got[k], want[k]) for k in want)
