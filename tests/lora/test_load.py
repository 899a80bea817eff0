"""load_lora: containers, safety (header cap, weights_only pickles), NaN refusal, reuse."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from loraworks.lora import LoRA, LoRAFormatError, apply_loras, load_lora
from loraworks.lora.files import MAX_HEADER_BYTES
from loraworks.lora.staging import move_packed
from tests.fixtures.models import build_components
from tests.lora.util import kohya_lora


@pytest.fixture(scope="module")
def sd1():
    return build_components("sd1")


@pytest.fixture(scope="module")
def sd1_lora(sd1):
    return kohya_lora(sd1)


def test_safetensors_file_with_metadata(tmp_path, sd1_lora):
    p = tmp_path / "style.safetensors"
    save_file(sd1_lora, str(p), {"ss_network_dim": "4", "ss_base_model_version": "sd_v1"})
    lora = load_lora(p)
    assert isinstance(lora, LoRA)
    assert lora.name == "style" and lora.base == "sd1" and lora.format == "kohya"
    assert lora.metadata["ss_network_dim"] == "4"
    assert len(lora.layers) == len(sd1_lora) // 3


def test_absurd_header_length_is_refused_before_parsing(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 10 * 1024**3) + b"{}")
    with pytest.raises(LoRAFormatError, match="refusing to parse"):
        load_lora(p)
    p.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b" " * 64)
    with pytest.raises(LoRAFormatError, match="header claims"):
        load_lora(p)


def test_invalid_json_header_and_truncated_files(tmp_path, sd1_lora):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(LoRAFormatError, match="not valid JSON"):
        load_lora(p)
    p.write_bytes(b"abc")
    with pytest.raises(LoRAFormatError, match="not a safetensors"):
        load_lora(p)
    good = tmp_path / "good.safetensors"
    save_file(sd1_lora, str(good))
    data = good.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoRAFormatError, match="outside the file"):
        load_lora(p)
    header = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(LoRAFormatError, match="outside the file"):
        load_lora(p)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/loraworks_pwned",))


def test_pickle_payload_is_never_executed(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"lora_unet_x.alpha": _Payload()}, f)
    with pytest.raises(LoRAFormatError, match="weights_only"):
        load_lora(p)
    import os

    assert not os.path.exists("/tmp/loraworks_pwned")


def test_plain_torch_file_loads(tmp_path, sd1_lora):
    p = tmp_path / "old.ckpt"
    torch.save(sd1_lora, p)
    assert load_lora(p).base == "sd1"


def test_nan_weights_are_refused_naming_the_layer(sd1_lora):
    sd = dict(sd1_lora)
    key = sorted(k for k in sd if k.endswith("lora_up.weight"))[3]
    sd[key] = sd[key].clone()
    sd[key][0, 0] = float("nan")
    with pytest.raises(LoRAFormatError, match=key.split(".")[0]):
        load_lora((sd, {}))
    sd[key][0, 0] = float("inf")
    with pytest.raises(LoRAFormatError, match="NaN/Inf"):
        load_lora((sd, {}))


def test_max_abs_measured_at_load_is_each_leafs_max(sd1_lora):
    """The overflow bound reuses these numbers instead of reading the tensors at patch time."""
    lora = load_lora((sd1_lora, {}))
    layer = next(iter(lora.layers.values()))
    for leaf, t in layer.tensors().items():
        assert layer.max_abs[leaf] == pytest.approx(float(t.float().abs().max()), rel=0, abs=0)


def test_move_packed_is_one_copy_per_dtype_with_the_same_values():
    """What `LoRA.to(device)` uses: the same tensors as a `.to` each, as views of one buffer per
    source dtype (one transfer), a tensor given twice coming back once."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g), torch.randn(7, generator=g).t()
    c = torch.randn(4, 2, 3, 3, generator=g).half()
    d = torch.randn(2, 6, generator=g)[:, ::2]  # not contiguous
    for dtype in (None, torch.bfloat16):
        moved = move_packed([a, c, b, a, d], torch.device("cpu"), dtype)
        for src, got in zip([a, c, b, a, d], moved, strict=True):
            want = src.to(dtype=dtype or src.dtype)
            assert got.shape == src.shape and got.dtype == want.dtype
            assert torch.equal(got, want)
        assert moved[0] is moved[3]
        storages = {t.untyped_storage().data_ptr() for t in moved}
        assert len(storages) == 2  # fp32 and fp16 sources


def test_move_packed_packs_at_most_pack_bytes(monkeypatch):
    """A huge LoRA is moved in packs, so packing never holds all of it twice."""
    from loraworks.lora import staging

    monkeypatch.setattr(staging, "PACK_BYTES", 64)
    tensors = [torch.full((n,), float(n)) for n in (4, 8, 20, 3, 1)]  # fp32: 16/32/80/12/4 B
    moved = move_packed(tensors, torch.device("cpu"), torch.float64)
    assert all(torch.equal(m, t.double()) for m, t in zip(moved, tensors, strict=True))
    storages = [m.untyped_storage().data_ptr() for m in moved]
    assert (
        storages[0] == storages[1] and len(set(storages[1:4])) == 3 and storages[3] == storages[4]
    )


def test_lora_to_another_device_moves_every_tensor_and_keeps_shapes(sd1_lora):
    lora = load_lora((sd1_lora, {}))
    before = {
        (k, leaf): (t.shape, t.dtype)
        for k, layer in lora.layers.items()
        for leaf, t in layer.all_tensors().items()
    }
    lora.to("meta")
    after = {
        (k, leaf): (t.shape, t.dtype)
        for k, layer in lora.layers.items()
        for leaf, t in layer.all_tensors().items()
    }
    assert after == before and lora.device.type == "meta"
    assert all(
        t.device.type == "meta" for layer in lora.layers.values() for t in layer.tensors().values()
    )


def test_empty_and_non_lora_files(tmp_path):
    with pytest.raises(LoRAFormatError, match="no tensors"):
        load_lora(({}, {}))
    with pytest.raises(LoRAFormatError, match="not a LoRA"):
        load_lora(({"model.diffusion_model.x.weight": torch.zeros(1)}, {}))
    with pytest.raises(LoRAFormatError, match="no such file"):
        load_lora(tmp_path / "missing.safetensors")
    with pytest.raises(LoRAFormatError, match="folder has no"):
        load_lora(tmp_path)


def test_missing_partner_and_rank_zero(sd1_lora):
    sd = {k: v for k, v in sd1_lora.items() if not k.endswith("lora_up.weight")}
    with pytest.raises(LoRAFormatError, match=r"missing lora_up\.weight"):
        load_lora((sd, {}))
    key = next(k for k in sd1_lora if k.endswith("lora_down.weight"))
    stem = key.rsplit(".", 2)[0]
    sd = {
        f"{stem}.lora_down.weight": torch.zeros(0, 768),
        f"{stem}.lora_up.weight": torch.zeros(8, 0),
    }
    with pytest.raises(LoRAFormatError, match="rank"):
        load_lora((sd, {}))


def test_a_lora_object_is_reusable(sd1, sd1_lora):
    lora = load_lora((sd1_lora, {}))
    name = next(iter(lora.layers))[5:]
    outs = []
    for _ in range(2):
        with apply_loras(sd1.as_mapping(), [(lora, 0.5)]):
            outs.append(sd1.unet.get_submodule(name).weight.detach().clone())
    assert torch.equal(outs[0], outs[1])
