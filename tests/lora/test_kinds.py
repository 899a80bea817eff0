"""Layer kinds declared once: the format label follows the kinds, a new kind is one class and
one `register` call, and the registry refuses a kind that would be ambiguous."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch

from loraworks.lora import apply_loras, load_lora
from loraworks.lora.layers import Layer, LoRALayer, register, registry
from loraworks.lora.layers.base import as_weight_shape, f32, require
from tests.fixtures.models import build_components
from tests.lora.util import kohya_name, targets
from tests.lora_parity.lycoris_files import lycoris_networks, lycoris_state_dict

LYCORIS_METADATA = {"ss_network_module": "lycoris.kohya"}


@pytest.mark.parametrize(
    ("kind", "kinds"),
    [
        ("loha", {"loha"}),
        ("lokr", {"lokr"}),
        ("ia3", {"ia3"}),
        ("glora", {"glora"}),
        ("full", {"full"}),
        ("norm", {"lora", "norm"}),
        ("oft", {"oft"}),
        ("boft", {"boft"}),
        ("dora", {"dora(lora)"}),
        ("locon_tucker", {"lora"}),
    ],
)
def test_lycoris_only_kinds_are_lycoris_with_or_without_network_module(kind, kinds):
    """LyCORIS's own files, written by LyCORIS, with and without ``ss_network_module``."""
    _, nets = lycoris_networks("sd1", kind)
    sd = lycoris_state_dict("sd1", nets)
    bare, tagged = load_lora((sd, {})), load_lora((sd, LYCORIS_METADATA))
    assert set(bare.kinds) == kinds
    assert bare.format == tagged.format == "lycoris"


def test_a_locon_without_network_module_is_kohya():
    """Plain LoRA/LoCon is kohya's own layout too: only the metadata can say LyCORIS."""
    _, nets = lycoris_networks("sd1", "locon")
    sd = lycoris_state_dict("sd1", nets)
    assert load_lora((sd, {})).format == "kohya"
    assert load_lora((sd, LYCORIS_METADATA)).format == "lycoris"


class GainLayer(Layer):
    """A kind no producer writes: ΔW = m · gain · delta (a full delta with its own gain)."""

    kind = "gain"
    leaves = frozenset({"gain_delta", "gain"})
    triggers = ("gain_delta",)
    spellings = MappingProxyType({"gain_A": "gain_delta", "gain": "gain"})
    format = "gainworks"

    def __init__(self, delta: torch.Tensor, gain: torch.Tensor):
        self.delta, self.gain = delta, gain

    @classmethod
    def from_state_dict(cls, leaves, convention):
        return cls(*require(leaves, "gain_delta", "gain"))

    def tensors(self):
        return {"gain_delta": self.delta, "gain": self.gain}

    def delta_shape(self):
        return tuple(self.delta.shape)

    def in_features(self):
        return int(self.delta.shape[1])

    def residuals(self, params, weight):
        w = params["weight"]
        dw = f32(self.delta, w.device) * (float(self.gain) * weight)
        return {"weight": as_weight_shape(dw, w), "bias": None}


@pytest.fixture
def isolated_registry(monkeypatch):
    """Kinds registered in a test stay in that test."""
    monkeypatch.setattr(registry, "_KINDS", list(registry.kinds()))


def test_a_new_kind_is_one_class_and_one_registration(isolated_registry):
    c = build_components("sd1")
    g = torch.Generator().manual_seed(3)
    sd, want = {}, {}
    for comp, name, real, mod in targets(c):
        key = kohya_name("sd1", comp, name)
        delta = torch.randn(mod.weight.shape, generator=g) * 0.01
        gain = torch.tensor(2.0 + len(sd) % 3)
        sd[f"{key}.gain_delta"], sd[f"{key}.gain"] = delta, gain
        want[comp, real] = mod.weight.detach() + delta * (gain * 0.7)
    with pytest.raises(Exception, match="unknown LoRA layer kind"):
        load_lora((sd, {}))

    register(GainLayer)
    lora = load_lora((sd, {}))
    assert lora.kinds == {"gain": len(want)} and lora.format == "gainworks"
    assert lora.base == "sd1"  # cross-attention width read through in_features()
    before = {k: c.as_mapping()[k[0]].get_submodule(k[1]).weight.detach().clone() for k in want}
    with apply_loras(c.as_mapping(), [(lora, 0.7)]) as report:
        assert report.applied == len(want) and not report.unmatched
        for (comp, real), expected in want.items():
            got = c.as_mapping()[comp].get_submodule(real).weight
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for (comp, real), w0 in before.items():
        assert torch.equal(c.as_mapping()[comp].get_submodule(real).weight, w0)


def test_a_registered_kind_s_peft_spellings_reach_the_converters(isolated_registry):
    """The diffusers/PEFT converters' leaf table is derived from the kinds' spellings."""
    c = build_components("sd1")
    _, name, _, mod = next(t for t in targets(c) if t[1].endswith("attn2.to_k"))
    sd = {f"unet.{name}.gain_A": torch.ones(mod.weight.shape), f"unet.{name}.gain": torch.ones(())}
    with pytest.raises(Exception, match="not a LoRA file we know"):
        load_lora((sd, {}))
    register(GainLayer)
    assert load_lora((sd, {})).kinds == {"gain": 1}


def test_the_registry_refuses_an_ambiguous_kind(isolated_registry):
    class Clash(GainLayer):
        triggers = ("lora_up.weight",)

    with pytest.raises(ValueError, match="already identify"):
        register(Clash)

    class Respelling(GainLayer):
        spellings = MappingProxyType({"lora_A.weight": "gain_delta"})

    with pytest.raises(ValueError, match="already means"):
        register(Respelling)
    assert registry.kinds()[0] is LoRALayer
